"""Property: every combination of training inputs (any value the published schema lets through) either
trains and returns a weights tar, or fails before any work with a message that names an input and no raw
exception class - resolution, batch size, steps/epochs, checkpointing, masks/face/crop options and the rest.

Hypothesis with a fixed seed (derandomized) and a small budget; a longer run:
``TRAINING_PROPERTY_EXAMPLES=200 pytest tests/training/test_property_inputs.py``.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import train as train_module

EXAMPLES = int(os.environ.get("TRAINING_PROPERTY_EXAMPLES", "8"))
INPUT_NAMES = [n for n in inspect.signature(train_module.train).parameters]
RAW = re.compile(r"\b\w*(Error|Exception)\b|Traceback")

# Every input: the valid values (small where a valid value costs CPU time: a resolution of 4096 is valid
# but trains for minutes here), and values the schema lets through that are not valid.
VALID = {
    "resolution": st.sampled_from([16, 24, 32]),
    "train_batch_size": st.integers(1, 3),
    "max_train_steps": st.integers(0, 2),
    "num_train_epochs": st.integers(1, 2),
    "checkpointing_steps": st.integers(1, 3),
    "is_lora": st.booleans(),
    "lora_rank": st.sampled_from([1, 4]),
    "lr_scheduler": st.sampled_from(["constant", "linear"]),
    "lr_warmup_steps": st.integers(0, 3),
    "ti_lr": st.sampled_from([3e-4, 0.0]),
    "token_string": st.sampled_from(["TOK", "sks"]),
    "mask_target_prompts": st.sampled_from([None, "", "a toy", "a toy, a ball"]),
    "crop_based_on_salience": st.booleans(),
    "use_face_detection_instead": st.booleans(),
    "clipseg_temperature": st.sampled_from([1.0, 1e-3, 1e6]),
    "snr_gamma": st.sampled_from([None, 5.0]),
    "noise_offset": st.sampled_from([0.0, 0.1, 1.0]),
    "seed": st.sampled_from([None, 0, 2**32 - 1]),
}
INVALID = {
    "resolution": st.sampled_from([-64, 0, 8, 12, 100, 4104, 10**6]),
    "train_batch_size": st.integers(-2, 0),
    "max_train_steps": st.just(-1),
    "num_train_epochs": st.integers(-1, 0),
    "checkpointing_steps": st.integers(-1, 0),
    "lora_rank": st.integers(-1, 0),
    "lr_warmup_steps": st.just(-1),
    "ti_lr": st.sampled_from([-1.0, math.inf, math.nan]),
    "token_string": st.sampled_from(["<s0>", "two words", "", " "]),
    "caption_prefix": st.sampled_from(["photo of tok", "", "a photo of TOKYO"]),
    "mask_target_prompts": st.sampled_from([", ,", "a toy,"]),
    "clipseg_temperature": st.sampled_from([-1.0, 0.0, math.nan, math.inf]),
    "snr_gamma": st.sampled_from([-1.0, 0.0, math.nan]),
    "seed": st.sampled_from([2**32, -1]),
}


@st.composite
def requests(draw):
    """All-valid inputs, with up to two of them replaced by invalid ones."""
    drawn = draw(st.fixed_dictionaries(VALID))
    drawn["caption_prefix"] = f"a photo of {drawn['token_string']}"
    broken = draw(st.lists(st.sampled_from(sorted(INVALID)), max_size=2, unique=True))
    for name in broken:
        drawn[name] = draw(INVALID[name])
    return drawn


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(folder / "photos.zip", "w") as z:
        for i, size in enumerate([(40, 32), (24, 36)]):  # one smaller than some resolutions: upscaled
            img = np.clip(rng.normal(128, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"p{i}.png")
            z.write(folder / f"p{i}.png", f"p{i}.png")
    return folder / "photos.zip"


@pytest.fixture(scope="module")
def work_started():
    """Records every expensive step: a model loaded by preprocess or the trainer."""
    from preprocess import caption, masks, upscale

    from training import loop

    calls: list[str] = []
    patches = [(loop, "setup"), (caption.Captioner, "__init__"), (masks.ClipSegMasker, "__init__"),
               (masks.FaceMasker, "__init__"), (upscale.Upscaler, "__init__")]
    originals = [getattr(owner, name) for owner, name in patches]

    def recording(label, real):
        def wrapper(*args, **kwargs):
            calls.append(label)
            return real(*args, **kwargs)
        return wrapper

    for (owner, name), real in zip(patches, originals):
        setattr(owner, name, recording(f"{getattr(owner, '__name__', owner)}.{name}", real))
    yield calls
    for (owner, name), real in zip(patches, originals):
        setattr(owner, name, real)


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(drawn=requests())
def test_any_training_request_succeeds_or_fails_before_work_naming_an_input(photos, work_started, drawn):
    args = {n: p.default.default for n, p in inspect.signature(train_module.train).parameters.items()
            if n != "input_images"}
    args.update(drawn, input_images=photos, verbose=False)
    work_started.clear()
    try:
        out = train_module.train(**args)
    except Exception as e:  # noqa: BLE001 - the property is about what any failure looks like
        message = str(e)
        assert type(e).__name__ in ("TrainingInputError", "PreprocessError"), (type(e).__name__, message, drawn)
        assert any(re.search(rf"\b{n}\b", message) for n in INPUT_NAMES), (message, drawn)
        assert not RAW.search(message), (message, drawn)
        assert work_started == [], (work_started, message, drawn)  # refused before any model was loaded
        return
    with tarfile.open(out.weights) as tar:
        names = tar.getnames()
    assert {"embeddings.pti", "special_params.json"} <= set(names)
    assert ("lora.safetensors" in names) == drawn["is_lora"] and ("unet.safetensors" in names) != drawn["is_lora"]
    shutil.rmtree(Path(out.weights).parent)
