"""The predictor's images equal plain diffusers' for every mode and scheduler (same tiny weights, seed, settings).

Equality is bitwise: the predictor makes exactly the diffusers pipeline calls, on CPU in fp32.
"""

import numpy as np
import pytest
from devkit.oracle import ORACLE_SCHEDULERS, Oracle

MODES = ["txt2img", "img2img", "inpaint"]
REFINES = ["expert_ensemble_refiner", "base_image_refiner"]


def _mode_inputs(mode, inputs):
    if mode == "img2img":
        return {"image": inputs["image"]}
    if mode == "inpaint":
        return {"image": inputs["image"], "mask": inputs["mask"]}
    return {}


@pytest.mark.parametrize("scheduler", list(ORACLE_SCHEDULERS))
@pytest.mark.parametrize("mode", MODES)
def test_mode_and_scheduler_match_diffusers(run, oracle, inputs, mode, scheduler):
    kw = dict(scheduler=scheduler, num_outputs=2, **_mode_inputs(mode, inputs))
    ours = run(**kw)
    theirs = oracle(mode, **kw)
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("scheduler", list(ORACLE_SCHEDULERS))
@pytest.mark.parametrize("refine", REFINES)
def test_refiner_modes_match_diffusers(run, oracle, refine, scheduler):
    kw = dict(scheduler=scheduler, refine=refine, num_inference_steps=5)
    np.testing.assert_array_equal(run(**kw)[0], oracle("txt2img", **kw)[0])


def test_base_image_refiner_uses_refine_steps(run, oracle):
    kw = dict(refine="base_image_refiner", refine_steps=7)
    ours = run(**kw)[0]
    np.testing.assert_array_equal(ours, oracle("txt2img", **kw)[0])
    assert not np.array_equal(ours, run(refine="base_image_refiner")[0])


def test_refiner_after_img2img_and_inpaint(run, oracle, inputs):
    for mode in ("img2img", "inpaint"):
        kw = dict(refine="expert_ensemble_refiner", **_mode_inputs(mode, inputs))
        np.testing.assert_array_equal(run(**kw)[0], oracle(mode, **kw)[0])


def test_same_seed_same_images_other_seed_other_images(run):
    a, b, c = run(seed=7)[0], run(seed=7)[0], run(seed=8)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_watermark_is_applied_as_diffusers_applies_it(run, oracle):
    """invisible-watermark only acts on images of at least 256 px; compare at 256 with and without it."""
    kw = dict(width=256, height=256, num_inference_steps=2)
    marked = run(apply_watermark=True, **kw)[0]
    np.testing.assert_array_equal(marked, oracle("txt2img", **kw)[0])
    plain = run(apply_watermark=False, **kw)[0]
    assert not np.array_equal(marked, plain)


    np.testing.assert_array_equal(plain, Oracle(watermark=False)("txt2img", **kw)[0])
