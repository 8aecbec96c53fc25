"""Request handling around the pipelines: step counts, sizes, inputs, safety checker, output formats."""


import numpy as np
import pytest
import torch
from PIL import Image


def _count_unet_calls(unet):
    calls = []
    handle = unet.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("steps, frac", [(10, 0.8), (7, 0.5), (50, 0.8)])
def test_expert_ensemble_makes_exactly_n_unet_calls(predictor, run, steps, frac):
    base_calls, h1 = _count_unet_calls(predictor.models.base.unet)
    refiner_calls, h2 = _count_unet_calls(predictor.models.refiner.unet)
    try:
        run(refine="expert_ensemble_refiner", scheduler="K_EULER", num_inference_steps=steps, high_noise_frac=frac)
    finally:
        h1.remove()
        h2.remove()
    assert len(base_calls) + len(refiner_calls) == steps
    assert len(base_calls) > 0 and len(refiner_calls) > 0


def test_sizes_not_multiple_of_8_are_rounded_down_with_a_log_line(run, caplog):
    caplog.set_level("INFO")
    (img,) = run(width=70, height=64)
    assert img.shape[:2] == (64, 64)
    assert "width 70 is not a multiple of 8: rounded down to 64" in caplog.text


@pytest.mark.parametrize("kw, name", [(dict(width=4), "width"), (dict(height=0), "height"), (dict(refine_steps=0), "refine_steps")])
def test_bad_numbers_are_refused_naming_the_input(run, kw, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        run(**kw)


def test_mask_without_image_is_refused(run, inputs):
    with pytest.raises(ValueError, match="^mask:"):
        run(mask=inputs["mask"])


@pytest.mark.parametrize(
    "content",
    [b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"definitely not an image", None],
    ids=["truncated-png", "random-bytes", "truncated-real-png"],
)
def test_unreadable_image_fails_naming_the_input(run, inputs, tmp_path, content):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content if content is not None else inputs["image"].read_bytes()[: inputs["image"].stat().st_size // 2])
    with pytest.raises(ValueError, match="^image: the file could not be read as an image"):
        run(image=bad)


def test_odd_image_modes_are_handled(run, tmp_path):
    """CMYK, 16-bit grey, palette with transparency, animated GIF, EXIF-rotated: all become RGB inputs."""
    rgb = Image.new("RGB", (64, 48), (200, 30, 30))
    cases = {
        "cmyk.jpg": rgb.convert("CMYK"),
        "grey16.png": Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16)),
        "palette.png": rgb.convert("P"),
    }
    for name, img in cases.items():
        img.save(tmp_path / name)
    gif = [Image.new("P", (64, 48), i) for i in range(3)]
    gif[0].save(tmp_path / "anim.gif", save_all=True, append_images=gif[1:])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: a 64x48 photo is really 48x64
    rgb.save(tmp_path / "rotated.jpg", exif=exif)
    for name in [*cases, "anim.gif"]:
        (img,) = run(image=tmp_path / name, num_inference_steps=2)
        assert img.shape == (48, 64, 3), name
    (img,) = run(image=tmp_path / "rotated.jpg", num_inference_steps=2)
    assert img.shape == (64, 48, 3)


def test_huge_image_is_refused_before_decoding(run, tmp_path):
    """Pixel bombs: small PNGs that declare 20000x20000 (PIL's own limit) and 5000x5000 (ours) pixels."""
    for side in (20000, 5000):
        Image.new("1", (side, side)).save(tmp_path / "bomb.png", optimize=True)
        assert (tmp_path / "bomb.png").stat().st_size < 2_000_000
        with pytest.raises(ValueError, match="^image: .*larger than the limit of 16777216 pixels"):
            run(image=tmp_path / "bomb.png")


def test_inpaint_mask_is_resized_to_the_image(run, oracle, inputs, tmp_path):
    Image.open(inputs["mask"]).resize((32, 32)).save(tmp_path / "small_mask.png")
    Image.open(inputs["mask"]).resize((32, 32)).resize((64, 64), Image.Resampling.LANCZOS).save(tmp_path / "same.png")
    ours = run(image=inputs["image"], mask=tmp_path / "small_mask.png")[0]
    np.testing.assert_array_equal(ours, oracle("inpaint", image=inputs["image"], mask=tmp_path / "same.png")[0])


@pytest.mark.parametrize("fmt, pil", [("png", "PNG"), ("webp", "WEBP"), ("jpg", "JPEG")])
def test_output_formats(predictor, fmt, pil):
    from devkit.oracle import DEFAULTS

    paths = predictor.predict(**{**DEFAULTS, "output_format": fmt, "num_outputs": 2})
    assert [p.suffix for p in paths] == [f".{fmt}"] * 2
    assert all(Image.open(p).format == pil for p in paths)


def test_default_output_is_png_as_the_reference(predictor):
    from devkit.oracle import DEFAULTS

    (path,) = predictor.predict(**{**DEFAULTS, "output_format": "png"})
    assert path.name == "out-0.png"


@pytest.fixture
def flag_everything(predictor):
    """Lower the checker's concept thresholds so every image is flagged (the real class, other weights)."""
    model = predictor.models.safety.model
    saved = model.concept_embeds_weights.clone()
    with torch.no_grad():
        model.concept_embeds_weights.fill_(-2.0)
    yield
    with torch.no_grad():
        model.concept_embeds_weights.copy_(saved)


def test_flagged_images_are_dropped_and_all_flagged_is_an_error(run, flag_everything, caplog):
    caplog.set_level("INFO")
    with pytest.raises(RuntimeError, match="NSFW content detected"):
        run(num_outputs=2)
    assert "NSFW content detected in image 0" in caplog.text
    assert len(run(num_outputs=2, disable_safety_checker=True)) == 2


def test_safety_checker_passes_clean_images(run):
    assert len(run(num_outputs=3)) == 3


def test_absurdly_long_prompt_is_refused_naming_the_input(run):
    with pytest.raises(ValueError, match="^negative_prompt: 10001 characters is over the limit of 10000"):
        run(negative_prompt="x" * 10_001)


@pytest.mark.parametrize("kw, name", [(dict(num_inference_steps=3), "num_inference_steps"), (dict(refine_steps=2), "refine_steps")])
def test_base_image_refiner_with_too_few_steps_is_refused(run, kw, name):
    with pytest.raises(ValueError, match=f"^{name}: 30% of .* = 0 denoising steps for the refiner .*at least 4"):
        run(refine="base_image_refiner", **kw)


@pytest.mark.parametrize("frac", [0.0, 0.99, 1.0])
def test_expert_ensemble_edge_fractions_run(run, frac):
    assert run(refine="expert_ensemble_refiner", high_noise_frac=frac)[0].shape == (64, 64, 3)


def test_expert_ensemble_split_leaving_the_base_no_step_is_refused(run):
    """4 K_EULER steps start at timestep 751: a hand-over at 0.05 (timestep 950) leaves the base nothing."""
    with pytest.raises(ValueError, match=r"^high_noise_frac, num_inference_steps: .* leaves the base model no "
                                         r"denoising step; use a high_noise_frac between 0\.25 and 0\.99 or "
                                         r"num_inference_steps of at least \d+"):
        run(refine="expert_ensemble_refiner", high_noise_frac=0.05)
    assert run(refine="expert_ensemble_refiner", high_noise_frac=0.05, num_inference_steps=20)[0].shape == (64, 64, 3)


def test_one_copy_of_each_module_in_the_runtime_dtype():
    """Pipelines share modules (no copies) and keep the half precision a GPU loads them in.

    bf16 on the CPU stands in for the GPU's fp16: diffusers' from_pipe silently converts shared
    modules to fp32 unless told the dtype, which doubled the GPU memory once.
    """
    from sdxl.models import load_all

    m = load_all("cpu", torch.bfloat16)
    for pipe in (m.img2img, m.inpaint):
        for name in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
            assert getattr(pipe, name) is getattr(m.base, name), name
    assert m.refiner.vae is m.base.vae and m.refiner.text_encoder_2 is m.base.text_encoder_2
    assert m.refiner.tokenizer_2 is m.base.tokenizer_2
    modules = [m.base.unet, m.base.vae, m.base.text_encoder, m.base.text_encoder_2, m.refiner.unet, m.safety.model]
    assert all(p.dtype == torch.bfloat16 for module in modules for p in module.parameters())
