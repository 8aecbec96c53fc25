"""End to end through coglet: the HTTP API a Replicate user sees, on tiny weights."""

import os

import pytest


def test_txt2img_returns_png_of_the_requested_size(api):
    body = api.predict_ok(width=64, height=96)
    [(mime, image)] = api.images(body["output"])
    assert (mime, image.format, image.size) == ("image/png", "PNG", (64, 96))
    assert "txt2img mode" in body["logs"]


def test_img2img_keeps_the_input_image_size(api):
    body = api.predict_ok(image=api.data_uri(api.png(96, 64)), prompt_strength=0.5, width=1024, height=1024)
    [(_, image)] = api.images(body["output"])
    assert image.size == (96, 64)
    assert "img2img mode" in body["logs"]


def test_inpaint_with_image_and_mask(api):
    body = api.predict_ok(
        image=api.data_uri(api.png(64, 64)), mask=api.data_uri(api.mask_png(64, 64)), width=64, height=64
    )
    [(_, image)] = api.images(body["output"])
    assert image.size == (64, 64)
    assert "inpainting mode" in body["logs"]


# base_image_refiner runs the refiner as img2img at strength 0.3: it needs refine_steps >= 4 for one step
@pytest.mark.parametrize("refine, steps", [("expert_ensemble_refiner", 2), ("base_image_refiner", 4)])
def test_refiner_modes(api, refine, steps):
    body = api.predict_ok(refine=refine, refine_steps=steps, high_noise_frac=0.5)
    [(_, image)] = api.images(body["output"])
    assert image.size == (64, 64)


def test_num_outputs_gives_that_many_files(api):
    body = api.predict_ok(num_outputs=3)
    assert [image.size for _, image in api.images(body["output"])] == [(64, 64)] * 3


@pytest.mark.parametrize("fmt, mime, pil_format", [("webp", "image/webp", "WEBP"), ("jpg", "image/jpeg", "JPEG")])
def test_output_format(api, fmt, mime, pil_format):
    body = api.predict_ok(output_format=fmt, output_quality=70)
    [(got_mime, image)] = api.images(body["output"])
    assert (got_mime, image.format) == (mime, pil_format)


@pytest.mark.parametrize(
    "name, value",
    [("num_outputs", 5), ("scheduler", "X"), ("guidance_scale", 0), ("refine", "?"), ("width", "wide")],
)
def test_invalid_inputs_are_refused_by_coglet_with_422(api, name, value):
    status, body = api.post({name: value})
    assert status == 422, body
    assert [d["loc"] for d in body["detail"]] == [["body", "input", name]]
    assert all(d["msg"] and d["type"] == "value_error" for d in body["detail"])


@pytest.mark.parametrize(
    "payload",
    [os.urandom(512), None],  # None: a PNG cut in half
    ids=["random-bytes", "truncated-png"],
)
def test_unreadable_image_fails_the_prediction_naming_the_input(api, payload):
    if payload is None:
        whole = api.png(64, 64, color=(10, 20, 30))
        payload = whole[: len(whole) // 2]
    body = api.predict_failed(image=api.data_uri(payload))
    assert "image" in body["error"]
    assert "could not be read as an image" in body["error"]
    # the worker survives: the next request is served normally
    api.predict_ok()


def test_width_not_multiple_of_8_is_rounded_down_and_logged(api):
    body = api.predict_ok(width=65, height=64)
    [(_, image)] = api.images(body["output"])
    assert image.size == (64, 64)
    assert "width 65 is not a multiple of 8: rounded down to 64" in body["logs"]


def test_unknown_inputs_are_dropped_not_refused(api):
    """coglet strips inputs the schema does not know (as Replicate does), rather than failing."""
    api.predict_ok(not_an_input="whatever")


def test_health_and_openapi_come_from_the_committed_schema(api):
    import json
    import urllib.request

    with urllib.request.urlopen(api.base_url + "/openapi.json") as response:
        served = json.load(response)
    assert served["components"]["schemas"]["Input"]["properties"]["scheduler"]["x-order"] == 7
