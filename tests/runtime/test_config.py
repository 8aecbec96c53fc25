"""cog.yaml is a valid Cog configuration with GPU build settings and both entry points."""

import json
from pathlib import Path

import jsonschema
import yaml

from cogrun import REPO_ROOT


def load_config() -> dict:
    return yaml.safe_load((REPO_ROOT / "cog.yaml").read_text())


def test_cog_yaml_is_valid(shared_reference: Path):
    schema = json.loads((shared_reference / "config_schema_v1.0.json").read_text())
    jsonschema.validate(load_config(), schema)


def test_cog_yaml_builds_for_gpu_with_both_entry_points():
    config = load_config()
    build = config["build"]
    assert build["gpu"] is True
    assert build["python_version"] == "3.11"
    assert build["python_requirements"] == "requirements.txt"
    assert (REPO_ROOT / build["python_requirements"]).is_file()
    assert any("pget" in step for step in build["run"])
    assert config["predict"] == "predict.py:Predictor"
    assert config["train"] == "train.py:train"


def test_dockerignore_keeps_local_state_out_of_the_image():
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", "weights-cache", "outputs", ".pytest_cache"):
        assert entry in ignored
