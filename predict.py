"""Cog predictor: the stability-ai/sdxl API (same inputs, same outputs, same trained-weights tars).

The inputs live here; the work lives in ``sdxl/`` (models, generation, fine-tunes, safety) and
``weights/`` (where weights come from).
"""

import logging
import sys
from typing import List, Optional

from cog import BaseRunner, Input, Path
from diffusers.pipelines.stable_diffusion_xl.watermark import StableDiffusionXLWatermarker

from sdxl.checks import check_request
from sdxl.generate import Settings, generate, seed_or_random
from sdxl.images import OutputFolder, load_request_images
from sdxl.models import load_all
from sdxl.openvino_backend import make_finetunes
from weights.cache import WeightsCache
from weights.sources import weights_given_at_setup

# The choices are the engine's tables (sdxl.schedulers.SCHEDULERS, sdxl.generate.REFINE_MODES,
# sdxl.images.OUTPUT_FORMATS), written out as literals because cog's static parser (cog build) reads only this
# file's own module-level literals, not names imported from other modules; tests/predict/test_choices.py
# fails when a list and its table differ.
SCHEDULER_NAMES = ["DDIM", "DPMSolverMultistep", "HeunDiscrete", "KarrasDPM", "K_EULER_ANCESTRAL", "K_EULER", "PNDM"]
REFINE_NAMES = ["no_refiner", "expert_ensemble_refiner", "base_image_refiner"]
OUTPUT_FORMAT_NAMES = ["png", "webp", "jpg"]

log = logging.getLogger("predict")


class Predictor(BaseRunner):
    def setup(self, weights: Optional[Path] = None) -> None:
        """Load base, refiner and safety checker once; ``weights`` (COG_WEIGHTS) is a trained tar to apply."""
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s", force=True)
        self.models = load_all()
        self.finetunes = make_finetunes(self.models)  # sdxl.finetune.FineTunes (its OpenVINO variant on OV)
        self.watermarker = StableDiffusionXLWatermarker()
        self.cache = WeightsCache.from_env()
        self.default_weights = weights_given_at_setup(weights)
        if self.default_weights:
            log.info("loading trained weights given at setup (COG_WEIGHTS): %s", self.default_weights)
            self.finetunes.use(self.default_weights, self.cache, input_name="COG_WEIGHTS", operator_given=True)
        self.outputs = OutputFolder(prefix="sdxl-out-")

    def predict(
        self,
        prompt: str = Input(description="Input prompt", default="An astronaut riding a rainbow unicorn"),
        negative_prompt: str = Input(description="Input Negative Prompt", default=""),
        image: Optional[Path] = Input(description="Input image for img2img or inpaint mode", default=None),
        mask: Optional[Path] = Input(
            description="Input mask for inpaint mode. Black areas will be preserved, white areas will be inpainted.",
            default=None,
        ),
        width: int = Input(description="Width of output image", default=1024),
        height: int = Input(description="Height of output image", default=1024),
        num_outputs: int = Input(description="Number of images to output.", ge=1, le=4, default=1),
        scheduler: str = Input(description="scheduler", choices=SCHEDULER_NAMES, default="K_EULER"),
        num_inference_steps: int = Input(description="Number of denoising steps", ge=1, le=500, default=50),
        guidance_scale: float = Input(description="Scale for classifier-free guidance", ge=1, le=50, default=7.5),
        prompt_strength: float = Input(
            description="Prompt strength when using img2img / inpaint. 1.0 corresponds to full destruction of information in image",
            ge=0.0,
            le=1.0,
            default=0.8,
        ),
        seed: Optional[int] = Input(description="Random seed. Leave blank to randomize the seed", default=None),
        refine: str = Input(description="Which refine style to use", choices=REFINE_NAMES, default="no_refiner"),
        high_noise_frac: float = Input(
            description="For expert_ensemble_refiner, the fraction of noise to use", default=0.8, le=1.0, ge=0.0
        ),
        refine_steps: Optional[int] = Input(
            description="For base_image_refiner, the number of steps to refine, defaults to num_inference_steps",
            default=None,
        ),
        apply_watermark: bool = Input(
            description="Applies a watermark to enable determining if an image is generated in downstream applications. If you have other provisions for generating or deploying images safely, you can use this to disable watermarking.",
            default=True,
        ),
        lora_scale: float = Input(
            description="LoRA additive scale. Only applicable on trained models.", ge=0.0, le=1.0, default=0.6
        ),
        replicate_weights: Optional[str] = Input(
            description="Replicate LoRA weights to use. Leave blank to use the default weights.", default=None
        ),
        disable_safety_checker: bool = Input(
            description="Disable safety checker for generated images. This feature is only available through the API. See [https://replicate.com/docs/how-does-replicate-work#safety](https://replicate.com/docs/how-does-replicate-work#safety)",
            default=False,
        ),
        output_format: str = Input(
            description="Format of the output images", choices=OUTPUT_FORMAT_NAMES, default="png"
        ),
        output_quality: int = Input(
            description="Quality when saving webp or jpg images, from 0 (worst) to 100 (best); ignored for png",
            ge=0,
            le=100,
            default=80,
        ),
    ) -> List[Path]:
        """Run a single prediction on the model."""
        # cheap checks and decoding first: bad input fails before any denoising
        width, height = check_request(
            prompt=prompt,
            negative_prompt=negative_prompt,
            width=width,
            height=height,
            refine=refine,
            refine_steps=refine_steps,
            num_inference_steps=num_inference_steps,
            has_image=image is not None,
            has_mask=mask is not None,
            prompt_strength=prompt_strength,
            high_noise_frac=high_noise_frac,
            scheduler=scheduler,
            scheduler_config=self.models.scheduler_config,
            refiner_scheduler_config=self.models.refiner_scheduler_config,
            seed=seed,
        )
        init_image, mask_image = load_request_images(image, mask)
        seed = seed_or_random(seed)

        self.finetunes.use_for_request(replicate_weights, self.default_weights, self.cache)
        prompt = self.finetunes.rewrite_prompt(prompt)
        log.info("Prompt: %s", prompt)

        settings = Settings(
            prompt=prompt,
            negative_prompt=negative_prompt,
            width=width,
            height=height,
            num_outputs=num_outputs,
            scheduler=scheduler,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            prompt_strength=prompt_strength,
            seed=seed,
            refine=refine,
            high_noise_frac=float(high_noise_frac),  # diffusers only honours a float hand-over
            refine_steps=refine_steps,
            apply_watermark=apply_watermark,
            lora_scale=lora_scale,
        )
        images = generate(
            self.models,
            settings,
            image=init_image,
            mask=mask_image,
            lora=self.finetunes.is_lora,
            watermarker=self.watermarker,
        )
        if not disable_safety_checker:
            images = self.models.safety.keep_safe(images)

        return [Path(p) for p in self.outputs.save(images, output_format, output_quality)]
