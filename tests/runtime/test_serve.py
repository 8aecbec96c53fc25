"""``cogrun.serve``: the server runner starts coglet, reports failures with its log, and cleans up."""

import os
import subprocess
import sys
import time

import pytest

from cogrun.serve import ServerError, running_server, server_command, server_env, stop


def test_failed_setup_is_reported_with_the_server_log(tmp_path):
    env = {**os.environ, "SDXL_WEIGHTS": str(tmp_path / "no-such-weights")}
    with pytest.raises(ServerError) as failure:
        with running_server("predict", env=env, timeout=120):
            pass
    message = str(failure.value)
    assert "SETUP_FAILED" in message or "exited" in message
    assert "no-such-weights" in message  # the log tail says why


def test_train_mode_uses_the_train_stub_and_flag():
    env = server_env("train", port=5123, env={}, refs={"predict": "predict.py:Predictor", "train": "train.py:train"})
    assert env["COG_TRAIN_TYPE_STUB"] == "train.py:train" and env["PORT"] == "5123"
    assert server_command("train")[-2:] == ["--x-mode", "train"]
    with pytest.raises(ServerError):
        server_env("train", refs={"predict": "predict.py:Predictor"})


def test_stop_ends_the_whole_process_group():
    """coglet runs its worker as a child: stopping the server must take both down."""
    spawn_child = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", spawn_child], start_new_session=True)
    time.sleep(0.5)
    stop(process, grace=5)
    assert process.poll() is not None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the orphaned grandchild is reaped by init shortly after
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail("a process of the group survived stop()")
