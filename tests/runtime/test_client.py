"""``python -m cogrun.client``: the cog-predict-style command line against a running server."""

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cogrun import REPO_ROOT
from cogrun.client import parse_inputs, parse_value


def run_client(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cogrun.client", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "text, value",
    [("3", 3), ("0.5", 0.5), ("true", True), ("false", False), ("a dog", "a dog"),
     ('"quoted"', '"quoted"'), ("null", "null"), ("[1, 2]", "[1, 2]"), ("", "")],
)  # fmt: skip
def test_values_are_numbers_and_booleans_when_they_parse_as_json_else_strings(text, value):
    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_at_path_becomes_a_data_uri_and_equals_signs_stay_in_values(tmp_path: Path):
    (tmp_path / "photo.png").write_bytes(b"\x89PNG fake")
    inputs = parse_inputs([f"image=@{tmp_path / 'photo.png'}", "prompt=a=b"])
    assert inputs == {"image": "data:image/png;base64,iVBORyBmYWtl", "prompt": "a=b"}
    with pytest.raises(ValueError):
        parse_inputs(["no-equals-sign"])


def test_client_writes_the_outputs(predict_server: str, tmp_path: Path):
    done = run_client("--url", predict_server, "-i", "prompt=a red fox", "-i", "width=64", "-i", "height=64",
                      "-i", "num_inference_steps=2", "-o", str(tmp_path))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "output.0.png").size == (64, 64)
    assert "status: succeeded" in done.stderr and "Prompt: a red fox" in done.stderr
    assert done.stdout.split() == [str(tmp_path / "output.0.png")]


def test_client_sends_files_and_saves_every_output(predict_server: str, tmp_path: Path):
    Image.new("RGB", (64, 64), (30, 140, 200)).save(tmp_path / "photo.png")
    out = tmp_path / "out"
    done = run_client("--url", predict_server, "-i", f"image=@{tmp_path / 'photo.png'}", "-i", "num_outputs=2",
                      "-i", "num_inference_steps=2", "-i", "output_format=webp", "-o", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["output.0.webp", "output.1.webp"]


def test_client_exits_nonzero_with_the_servers_message(predict_server: str, tmp_path: Path):
    (tmp_path / "noise.png").write_bytes(b"definitely not an image" * 10)
    done = run_client("--url", predict_server, "-i", f"image=@{tmp_path / 'noise.png'}", "-o", str(tmp_path))
    assert done.returncode == 1
    assert "error:" in done.stderr and "image: the file could not be read as an image" in done.stderr

    refused = run_client("--url", predict_server, "-i", "num_outputs=5", "-o", str(tmp_path))
    assert refused.returncode == 1
    assert "HTTP 422" in refused.stderr and "num_outputs: 5 is greater than the maximum of 4" in refused.stderr
    assert not list(tmp_path.glob("output.*"))
