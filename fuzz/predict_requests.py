"""Any predict request the published schema allows, and the contract every one of them must keep.

``predict_requests()`` draws inputs over the whole schema of ``.cog/openapi_schema.json`` (every
input, every choice, values anywhere in their declared ranges, with the boundaries drawn often; image
and mask as small generated pictures, so "txt2img", "img2img", "inpaint" and "mask without image" all
occur). Sizes and step counts lean small so each request takes a fraction of a second on tiny weights.

``check_outcome`` is the contract: the request succeeded with ``num_outputs`` images of the expected
size and format, or it failed with a message that names an input of the schema, raised by one of the
project's own error types (never a library's ``RuntimeError``, ``ZeroDivisionError``, ...).

Used by tests/runtime/test_request_property.py (through coglet over HTTP) and by the ``predict_request``
fuzz target (``python -m fuzz --target predict_request``, the predictor in-process, for longer runs).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from hypothesis import strategies as st

SCHEMA = Path(__file__).resolve().parent.parent / ".cog" / "openapi_schema.json"
OUR_ERRORS = ("InputError", "InputImageError", "WeightsError", "DownloadError", "ArchiveError")
FORMATS = {"png": "PNG", "webp": "WEBP", "jpg": "JPEG"}


def schema_inputs() -> dict[str, dict]:
    """The published Input properties, choices resolved (``allOf`` refs to enums)."""
    schema = json.loads(SCHEMA.read_text())
    components = schema["components"]["schemas"]
    inputs = {}
    for name, prop in components["Input"]["properties"].items():
        prop = dict(prop)
        for ref in prop.pop("allOf", []):
            prop["enum"] = components[ref["$ref"].rsplit("/", 1)[1]]["enum"]
        inputs[name] = prop
    return inputs


def _number(prop: dict, small_max: int | None = None):
    """Integers or floats inside the declared range, edges included; ``small_max`` keeps most draws cheap."""
    low, high = prop.get("minimum"), prop.get("maximum")
    if prop["type"] == "integer":
        low = -(2**31) if low is None else int(low)
        high = 2**31 - 1 if high is None else int(high)
        edges = st.sampled_from(sorted({low, high}))
        if small_max is not None:
            return st.one_of(st.integers(low, min(high, small_max)), edges if high <= small_max else st.just(low))
        return st.one_of(st.integers(low, high), edges)
    low, high = float(low if low is not None else -1e6), float(high if high is not None else 1e6)
    return st.one_of(st.floats(low, high, allow_nan=False), st.sampled_from([low, high]))


def _mostly(draw, common, rare):
    """``common``, but ``rare`` in about 4% of draws (refusals must not crowd out the rest). The rare band
    sits mid-range: Hypothesis favours an integer range's ends, and shrinks towards 0 (common)."""
    return rare if 480 <= draw(st.integers(0, 999)) < 520 else common


@st.composite
def picture(draw, mode: str = "RGB") -> dict:
    """A small picture as a spec (made into bytes by ``picture_bytes``): size, mode, seed."""
    return {"width": draw(st.integers(8, 72)), "height": draw(st.integers(8, 72)), "mode": mode,
            "seed": draw(st.integers(0, 2**16))}


def picture_bytes(spec: dict) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(spec["seed"])
    shape = (spec["height"], spec["width"]) + ((3,) if spec["mode"] == "RGB" else ())
    buffer = io.BytesIO()
    Image.fromarray((rng.rand(*shape) * 255).astype(np.uint8), spec["mode"]).save(buffer, "PNG")
    return buffer.getvalue()


@st.composite
def predict_requests(draw, max_steps: int = 12) -> dict:
    """One request: every schema input drawn (or left to its default); ``image``/``mask`` as picture specs.

    Inputs whose schema declares no range (width, height, refine_steps, seed) get values anywhere now and
    then (negative, zero, huge); strings are now and then over the prompt limit. Each of those comes in
    about 4% of draws, so most requests run.
    """
    inputs = schema_inputs()
    request: dict = {}
    small = {"num_inference_steps": max_steps}
    anywhere = st.integers(-(2**70), 2**70)  # what an unbounded JSON integer may hold
    special = {
        "width": _mostly(draw, st.integers(8, 72), st.one_of(st.integers(-8, 7), st.integers(4097, 2**40), anywhere)),
        "height": _mostly(draw, st.integers(8, 72), st.one_of(st.integers(-8, 7), st.integers(4097, 2**40), anywhere)),
        "refine_steps": _mostly(draw, st.one_of(st.none(), st.integers(1, max_steps)),
                                st.one_of(st.integers(-8, 0), st.integers(501, 10**6), anywhere)),
    }
    for name, prop in inputs.items():
        if name in ("image", "mask", "replicate_weights", "seed"):
            continue
        if name in special:
            value = special[name]
        elif "enum" in prop:
            value = st.sampled_from(prop["enum"])
        elif prop.get("type") == "boolean":
            value = st.booleans()
        elif prop.get("type") in ("integer", "number"):
            value = _number(prop, small.get(name))
        elif prop.get("type") == "string":
            value = _mostly(draw, st.text(max_size=40), st.just("x" * 10_001))
        else:
            raise AssertionError(f"the strategy does not know input {name!r} ({prop})")
        # now and then an input is left to its default (not the sizes and steps: 1024 px x 50 steps is slow)
        if name in ("width", "height", "num_inference_steps") or draw(st.integers(0, 9)) < 9:
            request[name] = draw(value)
    request["seed"] = draw(_mostly(draw, st.one_of(st.none(), st.integers(0, 2**32 - 1)), anywhere))
    mode = draw(_mostly(draw, st.sampled_from(["txt2img", "img2img", "inpaint"]), st.just("mask-only")))
    if mode in ("img2img", "inpaint"):
        request["image"] = draw(picture("RGB"))
    if mode in ("inpaint", "mask-only"):
        request["mask"] = draw(picture("L"))
    request["replicate_weights"] = draw(_mostly(draw, st.none(), st.sampled_from(
        ["/etc/passwd", "../../etc/shadow", "someone/missing-lora", "not a url", "data:,garbage"])))
    return request


def expected_size(request: dict, defaults: dict) -> tuple[int, int]:
    """The output size: the image's (rounded down to 8) in img2img, else width x height rounded down to 8."""
    if request.get("image") is not None and request.get("mask") is None:
        w, h = request["image"]["width"], request["image"]["height"]
    else:
        w, h = request.get("width", defaults["width"]), request.get("height", defaults["height"])
    return w - w % 8, h - h % 8


def check_outcome(request: dict, *, succeeded: bool, error: str | None, images: list, formats: list[str]) -> None:
    """Raise AssertionError (with the request) when the outcome breaks the contract."""
    inputs = schema_inputs()
    defaults = {name: prop.get("default") for name, prop in inputs.items()}
    shown = {k: (v if not isinstance(v, str) or len(v) < 60 else v[:20] + f"...({len(v)} chars)") for k, v in request.items()}
    if succeeded:
        want_n = request.get("num_outputs", defaults["num_outputs"])
        want_size = expected_size(request, defaults)
        want_format = FORMATS[request.get("output_format", defaults["output_format"])]
        sizes = [im.size for im in images]
        if len(images) != want_n or set(sizes) != {want_size} or set(formats) != {want_format}:
            raise AssertionError(f"succeeded with {len(images)} images of {sizes} ({formats}); expected {want_n} of "
                                 f"{want_size} ({want_format}): {shown}")
        return
    error = (error or "").replace("Prediction failed: ", "")  # coglet's prefix (twice) before "Type: message"
    kind, _, message = error.partition(": ")
    if kind not in OUR_ERRORS:
        raise AssertionError(f"failed with a raw exception {error[:300]!r}: {shown}")
    if not any(name in message for name in inputs):
        raise AssertionError(f"failed without naming an input: {error[:300]!r}: {shown}")


# --- the fuzz target: the predictor in-process ------------------------------------------------------

_predictor = None


def predict_request(request: dict) -> None:
    """Run ``request`` on an in-process predictor (tiny weights, set up once) and check the contract."""
    import tempfile

    from PIL import Image

    from .targets import Finding

    global _predictor
    if _predictor is None:
        from predict import Predictor

        _predictor = Predictor()
        _predictor.setup()
    defaults = {name: prop.get("default") for name, prop in schema_inputs().items()}
    with tempfile.TemporaryDirectory(prefix="fuzz-request-") as scratch:
        kwargs = {**defaults, **request}
        for name in ("image", "mask"):
            if kwargs.get(name) is not None:
                path = Path(scratch) / f"{name}.png"
                path.write_bytes(picture_bytes(kwargs[name]))
                kwargs[name] = path
        try:
            paths = _predictor.predict(**kwargs)
        except Exception as e:  # noqa: BLE001 - the contract decides
            outcome = dict(succeeded=False, error=f"{type(e).__name__}: {e}", images=[], formats=[])
        else:
            images = [Image.open(p) for p in paths]
            outcome = dict(succeeded=True, error=None, images=images, formats=[im.format for im in images])
        try:
            check_outcome(request, **outcome)
        except AssertionError as e:
            raise Finding(str(e)) from None
