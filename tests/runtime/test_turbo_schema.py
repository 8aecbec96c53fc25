"""cog.turbo.yaml and its schema (.cog/turbo/openapi_schema.json): valid, fresh, and honest about model defaults."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from cogrun import REPO_ROOT, schema_path

CONFIG = "cog.turbo.yaml"
MISSING = object()

# (name, JSON type, default, minimum, maximum): the model-dependent inputs have no default (None: the model's own)
TURBO_INPUTS = [
    ("prompt", "string", "An astronaut riding a rainbow unicorn", None, None),
    ("negative_prompt", "string", "", None, None),
    ("image", "uri", MISSING, None, None),
    ("mask", "uri", MISSING, None, None),
    ("width", "integer", MISSING, 64, 2048),
    ("height", "integer", MISSING, 64, 2048),
    ("num_outputs", "integer", 1, 1, 4),
    ("num_inference_steps", "integer", MISSING, 1, 10),
    ("guidance_scale", "number", MISSING, 0, 20),
    ("prompt_strength", "number", 0.5, 0, 1),
    ("seed", "integer", MISSING, None, None),
    ("model", "string", "sdxl-turbo", None, None),
    ("apply_watermark", "boolean", True, None, None),
    ("lora_scale", "number", 0.6, 0, 1),
    ("replicate_weights", "string", MISSING, None, None),
    ("disable_safety_checker", "boolean", False, None, None),
    ("output_format", "string", "png", None, None),
    ("output_quality", "integer", 80, 0, 100),
]


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(schema_path(CONFIG).read_text())


def test_turbo_schema_is_fresh():
    """The committed file is what `python -m cogrun.schema --config cog.turbo.yaml` makes from predict_turbo.py
    (generated in this process: the predictor's imports are most of the cost, and pytest has them already)."""
    from cogrun.schema import is_fresh

    assert schema_path(CONFIG) == REPO_ROOT / ".cog" / "turbo" / "openapi_schema.json"
    assert is_fresh(schema_path(CONFIG), config=CONFIG), (
        "stale: run `python -m cogrun.schema --config cog.turbo.yaml` and commit the result")


def test_turbo_config_is_valid(shared_reference: Path):
    config = yaml.safe_load((REPO_ROOT / CONFIG).read_text())
    jsonschema.validate(config, json.loads((shared_reference / "config_schema_v1.0.json").read_text()))


def test_turbo_config_builds_the_same_image_with_its_own_predictor():
    config = yaml.safe_load((REPO_ROOT / CONFIG).read_text())
    assert config["build"] == yaml.safe_load((REPO_ROOT / "cog.yaml").read_text())["build"]
    assert config["predict"] == "predict_turbo.py:Predictor" and "train" not in config


def test_turbo_inputs(schema: dict):
    schemas = schema["components"]["schemas"]
    props = schemas["Input"]["properties"]
    assert sorted(props, key=lambda name: props[name]["x-order"]) == [row[0] for row in TURBO_INPUTS]
    for name, type_, default, minimum, maximum in TURBO_INPUTS:
        prop = props[name]
        got_type = schemas[name]["type"] if "allOf" in prop else "uri" if prop.get("format") == "uri" else prop["type"]
        assert got_type == type_, name
        assert prop.get("default", MISSING) == default, name
        assert prop.get("minimum") == minimum and prop.get("maximum") == maximum, name
        if default is MISSING:
            assert prop["nullable"] is True, name
    assert schemas["model"]["enum"] == ["sdxl-turbo", "sdxl-lightning-4step", "sdxl-lightning-8step"]
    assert "required" not in schemas["Input"]
    assert "/trainings" not in schema["paths"]
