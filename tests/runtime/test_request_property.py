"""Any request the published predict schema allows either works or fails clearly, through coglet over HTTP.

Hypothesis draws whole requests (fuzz/predict_requests.py: every input, every choice, the ranges' edges,
txt2img / img2img / inpaint / a mask alone, both refiner modes, hostile replicate_weights values) and
each must end "succeeded with num_outputs images of the expected size and format" or "failed with a
message naming an input, from one of the project's error types". Fixed seed (derandomize) and a budget
of ~120 requests; ``python -m fuzz --target predict_request`` runs the same contract for longer.
"""

from __future__ import annotations

import io

from hypothesis import HealthCheck, event, given, settings
from PIL import Image

from fuzz.predict_requests import check_outcome, picture_bytes, predict_requests

EXAMPLES = 120


def _over_http(request: dict, api) -> dict:
    body = {name: value for name, value in request.items() if value is not None}  # null: left to its default
    for name in ("image", "mask"):
        if name in body:
            body[name] = api.data_uri(picture_bytes(body[name]))
    return body


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=predict_requests(max_steps=8))
def test_every_request_the_schema_allows_succeeds_or_fails_naming_an_input(api, request):
    status, body = api.post(_over_http(request, api))
    assert status == 200, (status, body, request)  # inside the schema: coglet never refuses it (422)
    assert body["status"] in ("succeeded", "failed"), body
    images, formats = [], []
    if body["status"] == "succeeded":
        for mime, image in api.images(body["output"]):
            images.append(image)
            formats.append(image.format)
            assert mime == Image.MIME[image.format], (mime, image.format)
    kind, _, rest = (body.get("error") or "").replace("Prediction failed: ", "").partition(": ")
    event("succeeded" if body["status"] == "succeeded" else f"{kind} blaming {rest.split(': ')[0]}")
    check_outcome(request, succeeded=body["status"] == "succeeded", error=body.get("error"), images=images,
                  formats=formats)


def test_a_stage_without_steps_is_refused_before_denoising_naming_the_inputs(api):
    """The cases that crashed inside diffusers, refused with what would work (and no denoising logged)."""
    png = api.data_uri(picture_bytes({"width": 40, "height": 32, "mode": "RGB", "seed": 1}))
    cases = [  # inputs -> words the message must hold
        ({"image": png, "prompt_strength": 0.0}, ["prompt_strength", "no denoising step", "above 0"]),
        ({"image": png, "prompt_strength": 0.3, "num_inference_steps": 2},
         ["num_inference_steps, prompt_strength", "num_inference_steps of at least 4", "prompt_strength of at least 0.50"]),
        ({"refine": "expert_ensemble_refiner", "high_noise_frac": 0.3, "num_inference_steps": 2},
         ["high_noise_frac", "leaves the base model no denoising step", "high_noise_frac between"]),
        ({"refine": "expert_ensemble_refiner", "high_noise_frac": 1.0, "num_inference_steps": 3},
         ["num_inference_steps", "high_noise_frac", "at least 4"]),
        ({"refine": "base_image_refiner", "refine_steps": 3}, ["refine_steps", "at least 4"]),
    ]
    for inputs, words in cases:
        body = api.predict_failed(**inputs)
        assert body["error"].replace("Prediction failed: ", "").startswith("InputError: "), body["error"]
        assert all(w in body["error"] for w in words), (words, body["error"])
        logs = body.get("logs") or ""
        assert not any(m in logs for m in ("txt2img mode", "img2img mode", "inpainting mode")), logs  # refused first


def test_high_noise_frac_at_the_ends_follows_diffusers_and_says_so(api):
    """diffusers ignores a hand-over at 0 or 1: the base denoises fully, the refiner refines 30% (logged)."""
    body = api.predict_ok(refine="expert_ensemble_refiner", high_noise_frac=1.0, num_inference_steps=4)
    assert "diffusers ignores a hand-over at 0 or 1" in body["logs"]
    [(_, image)] = api.images(body["output"])
    assert image.size == (64, 64)
