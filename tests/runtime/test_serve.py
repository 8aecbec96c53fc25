"""``cogrun.serve``: the server runner starts coglet, reports failures with its log, and cleans up."""

import os

import pytest

from cogrun.serve import ServerError, health, running_server, server_command, server_env


def test_failed_setup_is_reported_with_the_server_log(tmp_path):
    env = {**os.environ, "SDXL_WEIGHTS": str(tmp_path / "no-such-weights")}
    with pytest.raises(ServerError) as failure:
        with running_server("predict", env=env, timeout=120):
            pass
    message = str(failure.value)
    assert "SETUP_FAILED" in message or "exited" in message
    assert "no-such-weights" in message  # the log tail says why


def test_server_is_gone_after_the_block():
    with running_server("predict", env={**os.environ, "SDXL_WEIGHTS": "tiny"}, timeout=300) as base_url:
        assert health(base_url)["status"] == "READY"
    assert health(base_url, timeout=0.5) is None


def test_train_mode_uses_the_train_stub_and_flag():
    env = server_env("train", port=5123, env={}, refs={"predict": "predict.py:Predictor", "train": "train.py:train"})
    assert env["COG_TRAIN_TYPE_STUB"] == "train.py:train" and env["PORT"] == "5123"
    assert server_command("train")[-2:] == ["--x-mode", "train"]
    with pytest.raises(ServerError):
        server_env("train", refs={"predict": "predict.py:Predictor"})
