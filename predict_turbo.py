"""Cog predictor for few-step SDXL: SDXL-Turbo (default), SDXL-Lightning 4-step and 8-step (cog.turbo.yaml).

Its own Cog model because Cog reads ``Input()`` defaults statically: the inputs whose right value depends
on the model (steps, size, guidance) default to None, "the model's own recommendation" (sdxl/model_specs.py).
The inputs live here; the work is the SDXL engine's (``sdxl/``), as for predict.py.
"""

import logging
import sys
from typing import List, Optional

from cog import BaseRunner, Input, Path
from diffusers.pipelines.stable_diffusion_xl.watermark import StableDiffusionXLWatermarker

from sdxl.fewstep import FewStepModels, plan_request
from sdxl.finetune import FineTunes
from sdxl.openvino_backend import make_finetunes
from sdxl.generate import Settings, generate, seed_or_random
from sdxl.images import OutputFolder, load_request_images
from sdxl.model_specs import MODEL_SPECS
from weights.cache import WeightsCache
from weights.sources import weights_given_at_setup

# Literal lists: cog's static parser reads only this file's module-level literals (tests check that they
# equal sdxl.model_specs.FEWSTEP_MODELS and sdxl.images.OUTPUT_FORMATS).
MODEL_NAMES = ["sdxl-turbo", "sdxl-lightning-4step", "sdxl-lightning-8step"]
OUTPUT_FORMAT_NAMES = ["png", "webp", "jpg"]

log = logging.getLogger("predict_turbo")


class Predictor(BaseRunner):
    def setup(self, weights: Optional[Path] = None) -> None:
        """Load the default model and the safety checker; ``weights`` (COG_WEIGHTS) is a trained tar to apply."""
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s", force=True)
        self.models = FewStepModels(default=MODEL_NAMES[0])
        self.finetunes: dict[str, FineTunes] = {}
        self.watermarker = StableDiffusionXLWatermarker()
        self.cache = WeightsCache.from_env()
        self.default_weights = weights_given_at_setup(weights)
        if self.default_weights:
            log.info("loading trained weights given at setup (COG_WEIGHTS): %s", self.default_weights)
            self._finetunes(MODEL_NAMES[0]).use(self.default_weights, self.cache, input_name="COG_WEIGHTS",
                                                operator_given=True)
        self.outputs = OutputFolder(prefix="sdxl-turbo-out-")

    def _finetunes(self, model: str) -> FineTunes:
        """The fine-tunes of ``model``; the other models' are taken off first (they share text encoders)."""
        for name, finetunes in self.finetunes.items():
            if name != model:
                finetunes.unload()
        if model not in self.finetunes:
            self.finetunes[model] = make_finetunes(self.models.get(model))
        return self.finetunes[model]

    def predict(
        self,
        prompt: str = Input(description="Input prompt", default="An astronaut riding a rainbow unicorn"),
        negative_prompt: str = Input(
            description="Input Negative Prompt. Ignored without guidance (guidance_scale of 1 or less, the default of every model here)",
            default="",
        ),
        image: Optional[Path] = Input(description="Input image for img2img or inpaint mode", default=None),
        mask: Optional[Path] = Input(
            description="Input mask for inpaint mode. Black areas will be preserved, white areas will be inpainted.",
            default=None,
        ),
        width: Optional[int] = Input(
            description="Width of output image. Leave blank for the model's own: 512 (sdxl-turbo), 1024 (sdxl-lightning)",
            ge=64,
            le=2048,
            default=None,
        ),
        height: Optional[int] = Input(
            description="Height of output image. Leave blank for the model's own: 512 (sdxl-turbo), 1024 (sdxl-lightning)",
            ge=64,
            le=2048,
            default=None,
        ),
        num_outputs: int = Input(description="Number of images to output.", ge=1, le=4, default=1),
        num_inference_steps: Optional[int] = Input(
            description="Number of denoising steps. Leave blank for the model's own: 1 (sdxl-turbo), 4 or 8 (sdxl-lightning-4step/8step); with an image, raised until num_inference_steps x prompt_strength is at least 1",
            ge=1,
            le=10,
            default=None,
        ),
        guidance_scale: Optional[float] = Input(
            description="Scale for classifier-free guidance. Leave blank for the model's own: 0 (these models are distilled to run without guidance; above 1 turns it on)",
            ge=0,
            le=20,
            default=None,
        ),
        prompt_strength: float = Input(
            description="Prompt strength when using img2img / inpaint. 1.0 corresponds to full destruction of information in image",
            ge=0.0,
            le=1.0,
            default=0.5,
        ),
        seed: Optional[int] = Input(description="Random seed. Leave blank to randomize the seed", default=None),
        model: str = Input(
            description="Which few-step model: sdxl-turbo (Stability AI Community License) or SDXL-Lightning (openrail++)",
            choices=MODEL_NAMES,
            default="sdxl-turbo",
        ),
        apply_watermark: bool = Input(
            description="Applies a watermark to enable determining if an image is generated in downstream applications. If you have other provisions for generating or deploying images safely, you can use this to disable watermarking.",
            default=True,
        ),
        lora_scale: float = Input(
            description="LoRA additive scale. Only applicable on trained models.", ge=0.0, le=1.0, default=0.6
        ),
        replicate_weights: Optional[str] = Input(
            description="Replicate LoRA weights to use (trained on SDXL base: they work roughly on distilled models). Leave blank to use the default weights.",
            default=None,
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
        spec = MODEL_SPECS[model]
        plan = plan_request(
            spec,
            prompt=prompt,
            negative_prompt=negative_prompt,
            width=width,
            height=height,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            prompt_strength=prompt_strength,
            has_image=image is not None,
            has_mask=mask is not None,
            seed=seed,
        )
        init_image, mask_image = load_request_images(image, mask)
        seed = seed_or_random(seed)
        log.info("%s: %dx%d, %d steps, guidance %g", model, plan.width, plan.height, plan.num_inference_steps,
                 plan.guidance_scale)

        models = self.models.get(model)
        finetunes = self._finetunes(model)
        finetunes.use_for_request(replicate_weights, self.default_weights, self.cache)
        prompt = finetunes.rewrite_prompt(prompt)
        log.info("Prompt: %s", prompt)

        settings = Settings(
            prompt=prompt,
            negative_prompt=negative_prompt,
            width=plan.width,
            height=plan.height,
            num_outputs=num_outputs,
            scheduler=spec.scheduler,
            num_inference_steps=plan.num_inference_steps,
            guidance_scale=plan.guidance_scale,
            prompt_strength=prompt_strength,
            seed=seed,
            refine="no_refiner",
            high_noise_frac=0.0,
            refine_steps=None,
            apply_watermark=apply_watermark,
            lora_scale=lora_scale,
        )
        images = generate(
            models, settings, image=init_image, mask=mask_image, lora=finetunes.is_lora, watermarker=self.watermarker
        )
        if not disable_safety_checker:
            images = models.safety.keep_safe(images)

        return [Path(p) for p in self.outputs.save(images, output_format, output_quality)]
