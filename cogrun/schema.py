"""Write ``.cog/openapi_schema.json`` the way ``cog build`` does, without the cog CLI.

coglet (the Rust HTTP server) reads that file at start-up and validates every request body against
it; without it nothing is validated. The document has the shape the cog CLI emits (see
``../shared/reference/cog/STATIC-SCHEMA.md``): one OpenAPI 3.0.2 document per mode (predict: ``Input``
/ ``Output`` / ``/predictions``; train: ``TrainingInput`` / ``TrainingOutput`` / ``/trainings``), merged
into one file when both are configured. The input facts come from ``cog._inspector.create_predictor``,
the same introspection the Python SDK runs, so the schema follows predict.py / train.py exactly.

Usage::

    python -m cogrun.schema            # (re)write .cog/openapi_schema.json
    python -m cogrun.schema --check    # exit 1 when the committed file is stale
    python -m cogrun.schema --config cog.turbo.yaml   # another Cog config: .cog/turbo/openapi_schema.json
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import json
import sys
import textwrap
import warnings
from dataclasses import MISSING, Field, dataclass
from pathlib import Path
from typing import Any, Callable

from cogrun import DEFAULT_CONFIG, REPO_ROOT, SCHEMA_PATH, schema_path

DEFAULT_PREDICT = "predict.py:Predictor"
DEFAULT_TRAIN = "train.py:train"


@dataclass(frozen=True)
class Mode:
    """The names one mode uses in the OpenAPI document."""

    name: str  # "predict" | "train"
    endpoint: str
    input_key: str
    output_key: str
    request: str
    response: str
    summary: str
    description: str
    operation_id: str
    cancel_param: str

    @property
    def cancel_endpoint(self) -> str:
        return f"{self.endpoint}/{{{self.cancel_param}}}/cancel"


PREDICT = Mode(
    "predict", "/predictions", "Input", "Output", "PredictionRequest", "PredictionResponse",
    "Predict", "Run a single prediction on the model", "predict_predictions_post", "prediction_id",
)  # fmt: skip
TRAIN = Mode(
    "train", "/trainings", "TrainingInput", "TrainingOutput", "TrainingRequest", "TrainingResponse",
    "Train", "Run a single training on the model", "train_trainings_post", "training_id",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Which predictor / trainer: cog.yaml, else the conventional files
# ---------------------------------------------------------------------------------------------


def read_refs(root: Path = REPO_ROOT, config: str = DEFAULT_CONFIG) -> dict[str, str]:
    """``{"predict": "predict.py:Predictor", "train": "train.py:train"}`` as configured.

    From ``config`` (``run:`` or its older name ``predict:``, and ``train:``) when it exists; otherwise
    predict.py:Predictor, plus train.py:train when train.py exists. A ``train:`` whose file does not
    exist (yet) is left out.
    """
    config_file = root / config
    if config_file.exists():
        import yaml  # only needed here; pyyaml comes with transformers/huggingface-hub

        config = yaml.safe_load(config_file.read_text()) or {}
        refs = {}
        predict_ref = config.get("run") or config.get("predict")
        if predict_ref:
            refs["predict"] = predict_ref
        if config.get("train"):
            refs["train"] = config["train"]
        if not refs:
            raise SystemExit(f"{config_file}: neither run/predict nor train is set")
        # train.py may not be written yet: a trainer whose file is absent is left out, not an error
        if "train" in refs and not (root / refs["train"].partition(":")[0]).exists():
            del refs["train"]
        return refs
    refs = {"predict": DEFAULT_PREDICT}
    if (root / DEFAULT_TRAIN.split(":")[0]).exists():
        refs["train"] = DEFAULT_TRAIN
    return refs


def _module_name(ref: str) -> tuple[str, str]:
    """``"sub/predict.py:Predictor"`` -> ``("sub.predict", "Predictor")``."""
    path, _, name = ref.partition(":")
    if not path.endswith(".py") or not name:
        raise ValueError(f"not a cog reference (file.py:Name): {ref!r}")
    return path[: -len(".py")].replace("/", "."), name


def _run_function(module_name: str, name: str) -> Callable[..., Any]:
    """The function whose signature defines the inputs: ``run``/``predict`` of a class, or the function itself."""
    from cog import _inspector

    target = getattr(importlib.import_module(module_name), name)
    if inspect.isclass(target):
        _, fn = _inspector._selected_predict_method(target, f"{module_name}.{name}")
        return _inspector._unwrap(fn)
    return _inspector._unwrap(target)


def _explicit_defaults(fn: Callable[..., Any]) -> set[str]:
    """Names of the parameters that declare a default (``Input(default=...)`` or a plain ``= value``).

    The runtime cannot tell ``Input(default=None)`` from ``Input()`` (both store ``None``); the cog CLI
    reads the source, and so does this: only the first is optional.
    """
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    func = next(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    args = func.args.args
    explicit = set()
    for arg, default in zip(args[len(args) - len(func.args.defaults) :], func.args.defaults):
        is_input_call = isinstance(default, ast.Call) and (
            (isinstance(default.func, ast.Name) and default.func.id == "Input")
            or (isinstance(default.func, ast.Attribute) and default.func.attr == "Input")
        )
        if not is_input_call or default.args or any(k.arg == "default" for k in default.keywords):
            explicit.add(arg.arg)
    return explicit


# ---------------------------------------------------------------------------------------------
# One mode's document
# ---------------------------------------------------------------------------------------------


def title_case(name: str) -> str:
    """``"num_outputs"`` -> ``"Num Outputs"``, as the cog CLI titles inputs."""
    return " ".join(p[:1].upper() + p[1:] for p in name.split("_"))


def _number(x: float) -> int | float:
    """ge/le arrive as floats; write 1 rather than 1.0 when integral (as the Go CLI does)."""
    return int(x) if float(x).is_integer() else x


def _default_value(field: Any) -> Any:
    default = field.default
    if isinstance(default, Field):  # only from default_factory, which Input() refuses; kept for safety
        default = default.default_factory() if default.default_factory is not MISSING else None
    if default is None:
        return None
    return field.type.json_encode(default)


def input_schema(info: Any, explicit_defaults: set[str], title: str) -> tuple[dict, dict]:
    """The ``Input``/``TrainingInput`` object schema and the enum schemas of inputs with choices."""
    from cog import _adt as adt

    optional = (adt.Repetition.OPTIONAL, adt.Repetition.OPTIONAL_REPEATED)
    properties: dict[str, dict] = {}
    enums: dict[str, dict] = {}
    required: list[str] = []
    for name, field in sorted(info.inputs.items(), key=lambda kv: kv[1].order):
        prop: dict[str, Any] = {"x-order": field.order}
        if field.choices:
            enums[name] = {
                "title": name,
                "description": "An enumeration.",
                "enum": list(field.choices),
                "type": field.type.primitive.json_type()["type"],
            }
            prop["allOf"] = [{"$ref": f"#/components/schemas/{name}"}]
        else:
            prop["title"] = title_case(name)
            prop.update(field.type.json_type())
        default = _default_value(field)
        has_default = name in explicit_defaults
        if default is not None:
            prop["default"] = default
        if field.type.repetition in optional or (has_default and default is None):
            prop["nullable"] = True
        if not has_default and field.type.repetition not in optional:
            required.append(name)
        if field.description is not None:
            prop["description"] = field.description
        if field.ge is not None:
            prop["minimum"] = _number(field.ge)
        if field.le is not None:
            prop["maximum"] = _number(field.le)
        if field.min_length is not None:
            prop["minLength"] = field.min_length
        if field.max_length is not None:
            prop["maxLength"] = field.max_length
        if field.regex is not None:
            prop["pattern"] = field.regex
        if field.deprecated:
            prop["deprecated"] = True
        properties[name] = prop
    schema: dict[str, Any] = {"title": title, "type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema, enums


def _json_response(schema: dict) -> dict:
    return {"description": "Successful Response", "content": {"application/json": {"schema": schema}}}


_VALIDATION_ERROR_RESPONSE = {
    "description": "Validation Error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
}


def _envelope_schemas(mode: Mode) -> dict[str, dict]:
    """Request/response envelopes, Status and the validation error shapes (the same for every model)."""
    ref_in = {"$ref": f"#/components/schemas/{mode.input_key}"}
    ref_out = {"$ref": f"#/components/schemas/{mode.output_key}"}

    def text(title: str, **extra: str) -> dict:
        return {"title": title, "type": "string", **extra}

    return {
        mode.request: {
            "title": mode.request,
            "type": "object",
            "properties": {"id": text("Id"), "input": ref_in},
        },
        mode.response: {
            "title": mode.response,
            "type": "object",
            "properties": {
                "input": ref_in,
                "output": ref_out,
                "id": text("Id"),
                "version": text("Version"),
                "created_at": text("Created At", format="date-time"),
                "started_at": text("Started At", format="date-time"),
                "completed_at": text("Completed At", format="date-time"),
                "status": text("Status"),
                "error": text("Error"),
                "logs": text("Logs"),
                "metrics": {"title": "Metrics", "type": "object"},
            },
        },
        "Status": {
            "title": "Status",
            "description": "An enumeration.",
            "enum": ["starting", "processing", "succeeded", "canceled", "failed"],
            "type": "string",
        },
        "HTTPValidationError": {
            "title": "HTTPValidationError",
            "type": "object",
            "properties": {
                "detail": {
                    "title": "Detail",
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/ValidationError"},
                }
            },
        },
        "ValidationError": {
            "title": "ValidationError",
            "required": ["loc", "msg", "type"],
            "type": "object",
            "properties": {
                "loc": {
                    "title": "Location",
                    "type": "array",
                    "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                },
                "msg": {"title": "Message", "type": "string"},
                "type": {"title": "Error Type", "type": "string"},
            },
        },
    }


def _paths(mode: Mode) -> dict[str, dict]:
    return {
        "/": {"get": {"summary": "Root", "operationId": "root__get", "responses": {"200": _json_response({})}}},
        "/health-check": {
            "get": {
                "summary": "Healthcheck",
                "operationId": "healthcheck_health_check_get",
                "responses": {"200": _json_response({})},
            }
        },
        mode.endpoint: {
            "post": {
                "summary": mode.summary,
                "description": mode.description,
                "operationId": mode.operation_id,
                "requestBody": {
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{mode.request}"}}}
                },
                "responses": {
                    "200": _json_response({"$ref": f"#/components/schemas/{mode.response}"}),
                    "422": _VALIDATION_ERROR_RESPONSE,
                },
            }
        },
        mode.cancel_endpoint: {
            "post": {
                "summary": "Cancel",
                "operationId": f"cancel_{mode.endpoint.strip('/')}__{mode.cancel_param}__cancel_post",
                "parameters": [
                    {
                        "required": True,
                        "schema": {"title": title_case(mode.cancel_param), "type": "string"},
                        "name": mode.cancel_param,
                        "in": "path",
                    }
                ],
                "responses": {"200": _json_response({}), "422": _VALIDATION_ERROR_RESPONSE},
            }
        },
    }


def mode_document(ref: str, mode: Mode) -> dict:
    """The OpenAPI document ``cog build`` writes for one predictor (predict) or trainer (train) reference."""
    import cog
    from cog import _inspector

    module_name, name = _module_name(ref)
    with warnings.catch_warnings():  # predict() instead of run() is deprecated, but still what Replicate runs
        warnings.simplefilter("ignore", DeprecationWarning)
        info = _inspector.create_predictor(module_name, name)
        explicit = _explicit_defaults(_run_function(module_name, name))
    inputs, enums = input_schema(info, explicit, mode.input_key)
    schemas = {mode.input_key: inputs, mode.output_key: info.output.json_type(), **enums, **_envelope_schemas(mode)}
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": cog.__version__},
        "paths": _paths(mode),
        "components": {"schemas": schemas},
    }


def merge(predict: dict, train: dict) -> dict:
    """One document for both modes, as the CLI merges them: predict wins, train adds what is missing."""
    merged = json.loads(json.dumps(predict))
    for path, item in train["paths"].items():
        merged["paths"].setdefault(path, item)
    for key, schema in train["components"]["schemas"].items():
        merged["components"]["schemas"].setdefault(key, schema)
    return merged


def generate(root: Path = REPO_ROOT, config: str = DEFAULT_CONFIG) -> dict:
    """The whole document for one Cog config of this repository (predict and, when configured, train)."""
    root = root.resolve()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    refs = read_refs(root, config)
    docs = []
    if "predict" in refs:
        docs.append(mode_document(refs["predict"], PREDICT))
    if "train" in refs:
        docs.append(mode_document(refs["train"], TRAIN))
    return docs[0] if len(docs) == 1 else merge(*docs)


def render(document: dict) -> str:
    """Deterministic text: sorted keys, two-space indent, trailing newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def is_fresh(path: Path = SCHEMA_PATH, root: Path = REPO_ROOT, config: str = DEFAULT_CONFIG) -> bool:
    """Whether the file at ``path`` is exactly what :func:`generate` makes now."""
    return path.exists() and path.read_text() == render(generate(root, config))


def write(path: Path = SCHEMA_PATH, root: Path = REPO_ROOT, config: str = DEFAULT_CONFIG) -> bool:
    """Regenerate ``path``; returns whether its content changed."""
    text = render(generate(root, config))
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cogrun.schema", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the file is stale")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="the Cog config (default: %(default)s)")
    parser.add_argument("--output", type=Path, help="default: .cog/openapi_schema.json (cog.yaml), "
                        ".cog/<name>/openapi_schema.json (cog.<name>.yaml)")
    args = parser.parse_args(argv)
    args.output = args.output or schema_path(args.config)
    if args.check:
        if is_fresh(args.output, config=args.config):
            print(f"{args.output}: up to date")
            return 0
        print(
            f"{args.output} is stale: its predictor/trainer or {args.config} changed since it was generated; "
            f"run `python -m cogrun.schema --config {args.config}` and commit the result",
            file=sys.stderr,
        )
        return 1
    changed = write(args.output, config=args.config)
    print(f"{args.output}: {'written' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
