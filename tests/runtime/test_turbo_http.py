"""The few-step model (cog.turbo.yaml) end to end through coglet: its own schema, its defaults, its limits."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest

from cogrun.serve import running_server




@pytest.fixture(scope="module")
def turbo(make_api):
    with running_server("predict", env={**os.environ, "SDXL_WEIGHTS": "tiny"}, timeout=300, config="cog.turbo.yaml") as base_url:
        yield make_api(base_url)


def test_the_server_publishes_the_turbo_schema(turbo):
    with urllib.request.urlopen(turbo.base_url + "/openapi.json") as response:
        schema = json.load(response)
    props = schema["components"]["schemas"]["Input"]["properties"]
    assert "model" in props and "scheduler" not in props and "refine" not in props
    assert props["num_inference_steps"]["maximum"] == 10 and "default" not in props["num_inference_steps"]


def test_blank_inputs_are_sdxl_turbos_recommendation(turbo):
    status, body = turbo.post({"prompt": "a red fox"})
    assert status == 200 and body["status"] == "succeeded", body
    [(mime, image)] = turbo.images(body["output"])
    assert (mime, image.size) == ("image/png", (512, 512))
    assert "sdxl-turbo: 512x512, 1 steps, guidance 0" in body["logs"]


def test_img2img_with_blank_steps_runs_the_steps_strength_needs(turbo):
    status, body = turbo.post({"image": turbo.data_uri(turbo.png(64, 64)), "prompt_strength": 0.5})
    assert status == 200 and body["status"] == "succeeded", body
    assert "sdxl-turbo: 512x512, 2 steps" in body["logs"]


def test_lightning_loads_on_first_use_with_its_own_defaults(turbo):
    status, body = turbo.post({"model": "sdxl-lightning-4step", "width": 64, "height": 64})
    assert status == 200 and body["status"] == "succeeded", body
    assert "sdxl-lightning-4step: 64x64, 4 steps, guidance 0" in body["logs"]
    [(_, image)] = turbo.images(body["output"])
    assert image.size == (64, 64)


def test_steps_times_strength_below_one_fails_before_work_naming_both_inputs(turbo):
    status, body = turbo.post({"image": turbo.data_uri(turbo.png(64, 64)), "num_inference_steps": 1,
                               "prompt_strength": 0.5, "width": 64, "height": 64})
    assert status == 200 and body["status"] == "failed", body
    assert "num_inference_steps, prompt_strength: prompt_strength 0.5 of 1 steps is int(1 x 0.5) = 0" in body["error"]
    assert "img2img mode" not in body["logs"]


@pytest.mark.parametrize(
    "name, value",
    [("num_inference_steps", 11), ("num_inference_steps", 0), ("guidance_scale", 21), ("guidance_scale", -1),
     ("width", 32), ("height", 4096), ("model", "sdxl"), ("prompt_strength", 1.5), ("num_outputs", 5),
     ("output_format", "gif")],
)
def test_out_of_range_inputs_are_refused_by_coglet_with_422(turbo, name, value):
    status, body = turbo.post({name: value})
    assert status == 422, body
    assert [d["loc"] for d in body["detail"]] == [["body", "input", name]]
