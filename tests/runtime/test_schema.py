"""``.cog/openapi_schema.json``: fresh, in the CLI's shape, and the stability-ai/sdxl inputs exactly."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cogrun import REPO_ROOT, SCHEMA_PATH

SCHEDULERS = ["DDIM", "DPMSolverMultistep", "HeunDiscrete", "KarrasDPM", "K_EULER_ANCESTRAL", "K_EULER", "PNDM"]
REFINERS = ["no_refiner", "expert_ensemble_refiner", "base_image_refiner"]
MISSING = object()  # "no default in the schema" (a None default is left out, as the cog CLI does)

# stability-ai/sdxl on Replicate: (name, JSON type, default, minimum, maximum, choices)
SDXL_INPUTS = [
    ("prompt", "string", "An astronaut riding a rainbow unicorn", None, None, None),
    ("negative_prompt", "string", "", None, None, None),
    ("image", "uri", MISSING, None, None, None),
    ("mask", "uri", MISSING, None, None, None),
    ("width", "integer", 1024, None, None, None),
    ("height", "integer", 1024, None, None, None),
    ("num_outputs", "integer", 1, 1, 4, None),
    ("scheduler", "string", "K_EULER", None, None, SCHEDULERS),
    ("num_inference_steps", "integer", 50, 1, 500, None),
    ("guidance_scale", "number", 7.5, 1, 50, None),
    ("prompt_strength", "number", 0.8, 0, 1, None),
    ("seed", "integer", MISSING, None, None, None),
    ("refine", "string", "no_refiner", None, None, REFINERS),
    ("high_noise_frac", "number", 0.8, 0, 1, None),
    ("refine_steps", "integer", MISSING, None, None, None),
    ("apply_watermark", "boolean", True, None, None, None),
    ("lora_scale", "number", 0.6, 0, 1, None),
    ("replicate_weights", "string", MISSING, None, None, None),
    ("disable_safety_checker", "boolean", False, None, None, None),
]


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def json_type(prop: dict, schemas: dict) -> str:
    """The type an input accepts: 'uri' for files, the enum's type for choices."""
    if "allOf" in prop:
        return schemas[prop["allOf"][0]["$ref"].rsplit("/", 1)[1]]["type"]
    return "uri" if prop.get("format") == "uri" else prop["type"]


def test_openapi_schema_is_fresh():
    """The committed file is what `python -m cogrun.schema` makes from today's predict.py/train.py/cog.yaml."""
    done = subprocess.run(
        [sys.executable, "-m", "cogrun.schema", "--check"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_predict_inputs_match_stability_ai_sdxl(schema: dict):
    schemas = schema["components"]["schemas"]
    props = schemas["Input"]["properties"]
    ordered = sorted(props, key=lambda name: props[name]["x-order"])
    assert ordered[: len(SDXL_INPUTS)] == [row[0] for row in SDXL_INPUTS]
    assert [props[n]["x-order"] for n in ordered] == list(range(len(ordered)))
    for name, type_, default, minimum, maximum, choices in SDXL_INPUTS:
        prop = props[name]
        assert json_type(prop, schemas) == type_, name
        assert prop.get("default", MISSING) == default, name
        assert prop.get("minimum") == minimum and prop.get("maximum") == maximum, name
        enum = schemas[name]["enum"] if "allOf" in prop else None
        assert enum == choices, name
        if default is MISSING:
            assert prop["nullable"] is True, name
    assert "required" not in schemas["Input"], "every sdxl input is optional"
    for name in ordered[len(SDXL_INPUTS) :]:  # extras (output_format, ...) must be optional with a default
        assert "default" in props[name], name
    assert schemas["Output"] == {"title": "Output", "type": "array", "items": {"type": "string", "format": "uri"}}


def test_schema_has_the_cli_document_shape(schema: dict):
    assert schema["openapi"] == "3.0.2"
    assert schema["info"]["title"] == "Cog"
    schemas = schema["components"]["schemas"]
    for key in ("Input", "Output", "PredictionRequest", "PredictionResponse", "Status",
                "HTTPValidationError", "ValidationError"):  # fmt: skip
        assert key in schemas, key
    assert schemas["Input"]["properties"]["num_outputs"]["title"] == "Num Outputs"
    assert schemas["scheduler"] == {
        "title": "scheduler", "description": "An enumeration.", "enum": SCHEDULERS, "type": "string",
    }  # fmt: skip
    assert set(schema["paths"]) >= {"/", "/health-check", "/predictions", "/predictions/{prediction_id}/cancel"}
    assert SCHEMA_PATH.read_text().endswith("\n")


def test_training_document_is_merged_when_train_py_exists(schema: dict):
    if not (REPO_ROOT / "train.py").exists():
        pytest.skip("train.py is not written yet")
    schemas = schema["components"]["schemas"]
    assert {"TrainingInput", "TrainingOutput", "TrainingRequest", "TrainingResponse"} <= set(schemas)
    assert {"/trainings", "/trainings/{training_id}/cancel"} <= set(schema["paths"])
    assert schemas["TrainingOutput"]["properties"]["weights"]["format"] == "uri"


TOY_PREDICT = '''
from typing import Optional
from cog import BasePredictor, Input, Path

class Predictor(BasePredictor):
    def predict(
        self,
        text: str = Input(description="required: no default"),
        count: int = Input(default=2, ge=1, le=3),
        seed: int = Input(default=None),
        image: Optional[Path] = Input(default=None),
        size: int = Input(default=8, choices=[8, 16]),
    ) -> str:
        return text
'''
TOY_TRAIN = '''
from cog import BaseModel, Input, Path

class TrainingOutput(BaseModel):
    weights: Path

def train(data: Path = Input(description="training data")) -> TrainingOutput:
    return TrainingOutput(weights=data)
'''


def generate_for(root: Path) -> dict:
    """Run the generator on another project directory (in a child: module names would clash here)."""
    code = "import sys, json; from pathlib import Path; from cogrun.schema import generate; " \
           "print(json.dumps(generate(Path(sys.argv[1]))))"  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, str(root)], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_generator_follows_what_the_project_has(tmp_path: Path):
    (tmp_path / "predict.py").write_text(textwrap.dedent(TOY_PREDICT))
    only_predict = generate_for(tmp_path)
    inputs = only_predict["components"]["schemas"]["Input"]
    assert inputs["required"] == ["text"]
    assert inputs["properties"]["seed"] == {"x-order": 2, "title": "Seed", "type": "integer", "nullable": True}
    assert inputs["properties"]["image"]["nullable"] is True
    assert inputs["properties"]["count"]["minimum"] == 1
    assert only_predict["components"]["schemas"]["size"]["type"] == "integer"
    assert "/trainings" not in only_predict["paths"]

    (tmp_path / "train.py").write_text(textwrap.dedent(TOY_TRAIN))
    both = generate_for(tmp_path)
    assert both["components"]["schemas"]["TrainingInput"]["required"] == ["data"]
    assert both["components"]["schemas"]["Input"] == inputs
    assert "/trainings" in both["paths"] and "/predictions" in both["paths"]

    (tmp_path / "train.py").unlink()  # cog.yaml names a train.py that is not there (yet): predict only
    (tmp_path / "cog.yaml").write_text('build:\n  python_version: "3.11"\npredict: "predict.py:Predictor"\ntrain: "train.py:train"\n')
    assert "/trainings" not in generate_for(tmp_path)["paths"]
