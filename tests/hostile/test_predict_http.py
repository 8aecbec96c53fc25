"""Hostile requests to the predict server, through coglet over HTTP (one server for the module):
input images of every awkward kind, hostile replicate_weights, a cancel mid-denoising and a
download cut mid-file. After each, the server keeps serving and the base model's image is
bitwise the one it gave before (``baseline``).
"""

from __future__ import annotations

import io
import tarfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from hostile.builders import FAKE_PNG, canary_pickle, encode, picture, png, png_with_size, tar_bytes, tar_link, truncated_png
from PIL import Image

PLAIN = {"prompt": "a photo of a dog", "seed": 1234}


@pytest.fixture(scope="module")
def baseline(predict_api) -> bytes:
    """The base model's PNG for PLAIN, before anything hostile happened."""
    [png_bytes] = predict_api.output_bytes(predict_api.predict_ok(**PLAIN))
    return png_bytes


def assert_base_unchanged(api, baseline: bytes) -> None:
    """The next request is served and its image is bitwise the base model's."""
    [again] = api.output_bytes(api.predict_ok(**PLAIN))
    assert again == baseline, "the predictor is not back to the base model bitwise"


# --- input images --------------------------------------------------------------------------------


def _exif_rotated() -> bytes:
    im = picture((64, 32))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    return encode(im, "JPEG", exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [picture((64, 48), seed=i).convert("P") for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def _palette_transparent() -> bytes:
    p = picture((48, 40)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    return encode(p, "PNG", transparency=0)


def _sixteen_bit() -> bytes:
    ramp = (np.arange(64 * 40, dtype=np.uint32).reshape(40, 64) * 25).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")


GOOD_IMAGES = {  # name -> (bytes, mime, expected output size of img2img)
    "cmyk-jpeg": (lambda: encode(picture((56, 40), mode="CMYK"), "JPEG"), "image/jpeg", (56, 40)),
    "16-bit-png": (_sixteen_bit, "image/png", (64, 40)),
    "palette-transparency": (_palette_transparent, "image/png", (48, 40)),
    "animated-gif": (_animated_gif, "image/gif", (64, 48)),
    "exif-rotated-jpeg": (_exif_rotated, "image/jpeg", (32, 64)),
    "webp-alpha": (lambda: encode(picture((40, 40), mode="RGBA"), "WEBP"), "image/webp", (40, 40)),
}


@pytest.mark.parametrize("kind", sorted(GOOD_IMAGES))
def test_awkward_but_valid_images_are_used(predict_api, baseline, kind):
    make, mime, size = GOOD_IMAGES[kind]
    body = predict_api.predict_ok(image=predict_api.data_uri(make(), mime), prompt_strength=0.5)
    [out] = predict_api.pixels(body)
    assert (out.shape[1], out.shape[0]) == size
    assert "img2img mode" in body["logs"]


def test_exif_rotated_and_small_masks_are_resized_to_the_image(predict_api):
    for mask in (_exif_rotated(), png((8, 8))):
        body = predict_api.predict_ok(image=predict_api.data_uri(png((64, 64))), mask=predict_api.data_uri(mask, "image/png"))
        assert [p.shape[:2] for p in predict_api.pixels(body)] == [(64, 64)]


BAD_IMAGES = {  # name -> (bytes, words the error must contain)
    "truncated-png": (lambda: truncated_png((64, 64)), ["could not be read as an image"]),
    "fake-png-html": (lambda: FAKE_PNG, ["could not be read as an image"]),
    "empty-file": (lambda: b"", ["could not be read as an image"]),
    "pixel-bomb-10000x10000": (lambda: png_with_size(10_000, 10_000), ["limit of 16777216 pixels"]),
    "pixel-bomb-5000x5000": (lambda: png_with_size(5_000, 5_000), ["5000x5000", "limit of 16777216 pixels"]),
    "one-pixel": (lambda: png((1, 1)), ["1x1", "at least 8x8"]),
    "pixel-bomb-100000x100000": (lambda: png_with_size(100_000, 100_000), ["limit", "pixels"]),
}


@pytest.mark.parametrize("which", ["image", "mask"])
@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
def test_unusable_images_fail_naming_the_input(predict_api, baseline, kind, which):
    make, words = BAD_IMAGES[kind]
    data = make()
    assert len(data) < 20_000
    inputs = {"image": predict_api.data_uri(png((64, 64)))}
    inputs[which] = predict_api.data_uri(data)
    body = predict_api.predict_failed(**inputs)
    assert f"InputImageError: {which}: " in body["error"], body["error"]
    assert all(w in body["error"] for w in words), body["error"]  # e.g. the pixel count read from the header
    assert "img2img mode" not in body["logs"] and "inpainting mode" not in body["logs"]


def test_server_still_serves_the_same_base_image_after_bad_images(predict_api, baseline):
    assert_base_unchanged(predict_api, baseline)


def test_prompt_over_the_limit_fails_before_denoising(predict_api, baseline):
    body = predict_api.predict_failed(prompt="x" * 10_001, num_inference_steps=500)
    assert "InputError: prompt: 10001 characters is over the limit of 10000" in body["error"], body["error"]
    assert "txt2img mode" not in body["logs"], body["logs"]  # refused before the pipeline started
    body = predict_api.predict_failed(negative_prompt="y" * 20_000)
    assert "InputError: negative_prompt: 20000 characters" in body["error"], body["error"]
    assert_base_unchanged(predict_api, baseline)


# --- hostile replicate_weights -------------------------------------------------------------------


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> dict[str, bytes]:
    """Good and hostile trained-weights tars (bytes), served by the loopback file server."""
    import weights
    from diffusers import UNet2DConditionModel
    from devkit.reference_tars import reference_lora_tar

    d = tmp_path_factory.mktemp("weights")
    unet = UNet2DConditionModel.from_pretrained(weights.resolve("sdxl-base"), subfolder="unet", variant="fp16")
    good = reference_lora_tar(d / "good.tar", unet).read_bytes()
    other = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=48, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=4,
    )
    sd15 = reference_lora_tar(d / "sd15.tar", other).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(good)) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    canary = d / "UNPICKLED"
    return {
        "good": good,
        "sd15": sd15,
        "truncated": good[: len(good) // 2],
        "garbage": bytes(range(256)) * 64,
        "tar-gz-corrupt": tar_bytes(list(members.items()), "w:gz")[:-2000],
        "pickle-as-safetensors": tar_bytes([("lora.safetensors", canary_pickle(canary)),
                                             ("special_params.json", b'{"TOK": "<s0><s1>"}')]),
        "dotdot": tar_bytes([("lora.safetensors", members["lora.safetensors"]), ("../escaped.safetensors", b"x" * 64)]),
        "absolute-symlink": tar_bytes([("lora.safetensors", members["lora.safetensors"]), tar_link("link", "/etc/passwd")]),
        "canary": str(canary).encode(),
    }


@pytest.fixture(scope="module")
def served(file_server, weight_files) -> dict[str, str]:
    urls = {}
    for name, data in weight_files.items():
        file_server.files[f"/{name}.tar"] = data
        urls[name] = f"{file_server.url}/{name}.tar"
    return urls


@pytest.fixture(scope="module")
def lora_image(predict_api, served, baseline) -> bytes:
    """The good LoRA's image for PLAIN (and it differs from the base: the weights really act)."""
    body = predict_api.predict_ok(replicate_weights=served["good"], lora_scale=1.0, **PLAIN)
    [tuned] = predict_api.output_bytes(body)
    assert tuned != baseline
    return tuned


HOSTILE_WEIGHTS = {  # name -> words the error must contain
    "truncated": ["replicate_weights"],
    "garbage": ["replicate_weights", "expected a tar of trained weights"],
    "tar-gz-corrupt": ["replicate_weights"],
    "pickle-as-safetensors": ["replicate_weights", "lora.safetensors is not a valid safetensors file"],
    "sd15": ["replicate_weights", "lora.safetensors"],
    "dotdot": ["replicate_weights", "unsafe member"],
    "absolute-symlink": ["replicate_weights", "unsafe member"],
}


@pytest.mark.parametrize("name", sorted(HOSTILE_WEIGHTS))
def test_hostile_weights_fail_clearly_and_leave_the_base_model(predict_api, baseline, lora_image, served, weight_files, name):
    cache = predict_api.cache
    before = {p for p in cache.parent.rglob("*")} if cache else set()
    body = predict_api.predict_failed(replicate_weights=served[name], **PLAIN)
    assert all(w in body["error"] for w in HOSTILE_WEIGHTS[name]), body["error"]
    assert not Path(weight_files["canary"].decode()).exists(), "a pickle was unpickled"
    # nothing half-extracted or escaped: the cache holds only complete entries, its parent nothing new
    after = {p for p in cache.parent.rglob("*")}
    new = {p for p in after - before if cache not in p.parents and p != cache}
    assert new == set(), new
    assert not any(p.name.startswith(".") for p in cache.iterdir()), list(cache.iterdir())
    assert_base_unchanged(predict_api, baseline)


def test_good_weights_after_the_hostile_ones_give_the_same_image(predict_api, lora_image, served):
    body = predict_api.predict_ok(replicate_weights=served["good"], lora_scale=1.0, **PLAIN)
    assert predict_api.output_bytes(body) == [lora_image]


# --- faults --------------------------------------------------------------------------------------


def _cancel_mid_denoising(api, file_server, **inputs) -> dict:
    """Start a long prediction asynchronously, cancel it once it is denoising; its final state.

    500 steps at 256 px take ~10 s on an idle core (far longer under load): the cancel after 1 s
    always lands mid-denoising, however fast the machine is.
    """
    while not file_server.posts.empty():
        file_server.posts.get_nowait()
    prediction_id = f"hostile-{uuid.uuid4().hex[:12]}"
    api.wait_ready()
    status, body = api.start_async(prediction_id, {**inputs, "width": 256, "height": 256, "num_inference_steps": 500},
                                   webhook=f"{file_server.url}/webhook")
    assert status in (200, 202), body
    deadline = time.monotonic() + 60
    started = False
    while time.monotonic() < deadline and not started:  # the "start" webhook
        try:
            update = file_server.posts.get(timeout=1)
        except Exception:  # queue.Empty
            continue
        if update.get("id") == prediction_id and update.get("status") == "processing":
            started = True
    assert started, "the prediction never started"
    time.sleep(1.0)  # mid-denoising
    assert api.cancel(prediction_id) == 200
    final = None
    while time.monotonic() < deadline:
        try:
            update = file_server.posts.get(timeout=1)
        except Exception:
            continue
        if update.get("status") in ("canceled", "succeeded", "failed"):
            final = update
            break
    assert final is not None, "no completed webhook after the cancel"
    assert "txt2img mode" in (final.get("logs") or ""), "cancelled before denoising started"
    # No output: the cancel stopped the 500 steps. Had denoising finished first, the prediction would have
    # succeeded with an image (safety check and saving take milliseconds).
    assert not final.get("output"), "cancelled only after denoising had finished"
    api.wait_ready()
    return final


def test_cancel_mid_denoising_leaves_the_predictor_as_before(predict_api, baseline, file_server):
    final = _cancel_mid_denoising(predict_api, file_server, **PLAIN)
    assert final["status"] == "canceled", (final["status"], final.get("error"))
    assert_base_unchanged(predict_api, baseline)


def test_cancel_with_trained_weights_active_then_same_images(predict_api, baseline, lora_image, served, file_server):
    final = _cancel_mid_denoising(predict_api, file_server, replicate_weights=served["good"], lora_scale=1.0, **PLAIN)
    assert final["status"] == "canceled"
    body = predict_api.predict_ok(replicate_weights=served["good"], lora_scale=1.0, **PLAIN)
    assert predict_api.output_bytes(body) == [lora_image]
    assert_base_unchanged(predict_api, baseline)


def test_download_cut_mid_file_leaves_no_half_file_and_the_base_model(predict_api, baseline, lora_image, weight_files, file_server):
    path = "/cut-mid-file.tar"
    data = weight_files["good"]
    file_server.files[path] = data
    file_server.drop[path] = (len(data) // 2, file_server.ALWAYS)  # full Content-Length, half the bytes
    requests_before = len(file_server.requests)
    body = predict_api.predict_failed(replicate_weights=file_server.url + path, **PLAIN)
    assert "replicate_weights" in body["error"] and "could not download" in body["error"], body["error"]
    assert len(file_server.requests) - requests_before >= 2  # retried
    cache = predict_api.cache
    leftovers = [p.name for p in cache.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers  # no .part / .download file
    assert_base_unchanged(predict_api, baseline)
    # the same URL, now complete, is fetched again (no poisoned cache entry) and gives the LoRA's image
    del file_server.drop[path]
    body = predict_api.predict_ok(replicate_weights=file_server.url + path, lora_scale=1.0, **PLAIN)
    assert predict_api.output_bytes(body) == [lora_image]
    assert_base_unchanged(predict_api, baseline)


def test_server_tmpdir_holds_no_leftovers_of_failed_requests(predict_api):
    """Only the predictor's current output folder may remain in the server's TMPDIR."""
    leftovers = [p.name for p in predict_api.tmp.iterdir() if not p.name.startswith("sdxl-out-")]
    assert len([p for p in predict_api.tmp.iterdir() if p.name.startswith("sdxl-out-")]) <= 1
    assert all(not p.endswith((".part", ".download")) for p in leftovers), leftovers
