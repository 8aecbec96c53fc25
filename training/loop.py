"""The training loop: encode -> noise -> predict -> masked loss -> step -> restore embeddings -> checkpoint."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import TrainConfig
from .data import LatentCache, PreparedDataset
from .tokens import PivotalTokens

log = logging.getLogger(__name__)

LORA_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
UNET_WEIGHT_DECAY = 1e-4
TI_WEIGHT_DECAY = 0.0


@dataclass
class TrainState:
    """Everything the loop touches."""

    cfg: TrainConfig
    accelerator: object
    tokenizers: list
    text_encoders: list
    unet: torch.nn.Module
    noise_scheduler: object
    tokens: PivotalTokens
    data: LatentCache
    dataset: PreparedDataset

    @property
    def device(self) -> torch.device:
        return self.accelerator.device


@dataclass
class StepLog:
    step: int  # 1-based number of optimizer steps done
    loss: float
    lr_unet: float  # LoRA or full UNet group
    lr_ti: float  # embeddings group (0 after the pivot)


@dataclass
class History:
    steps: list[StepLog] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    pivot_step: int = 0
    total_steps: int = 0


def total_steps(cfg: TrainConfig, n_examples: int) -> int:
    """max_train_steps wins over num_train_epochs; 0 means: train num_train_epochs epochs."""
    if cfg.max_train_steps > 0:
        return cfg.max_train_steps
    return cfg.num_train_epochs * math.ceil(n_examples / cfg.train_batch_size)


def make_accelerator():
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    if cuda:  # as reproducible as CUDA gets (bitwise only on CPU: some CUDA kernels are not deterministic)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return Accelerator(mixed_precision="bf16" if cuda else "no", cpu=not cuda)


def setup(cfg: TrainConfig, dataset_dir: Path, base_dir: Path | None = None, accelerator=None) -> TrainState:
    """Load the base model, add the new tokens (and LoRA), cache the latents. ``cfg.seed`` must be set."""
    from accelerate.utils import set_seed
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if base_dir is None:
        import weights

        base_dir = weights.resolve("sdxl-base")
    accelerator = accelerator or make_accelerator()
    device = accelerator.device
    frozen_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)
    set_seed(cfg.seed)

    # The text encoders stay fp32 everywhere: their new embedding rows train in fp32, and a bf16
    # encoder fed fp32 embeddings would mix dtypes. The frozen UNet of a LoRA run is bf16 on GPU.
    load = dict(variant="fp16", torch_dtype=torch.float32)
    tokenizers = [CLIPTokenizer.from_pretrained(base_dir, subfolder=s) for s in ("tokenizer", "tokenizer_2")]
    text_encoders = [
        CLIPTextModel.from_pretrained(base_dir, subfolder="text_encoder", **load).to(device),
        CLIPTextModelWithProjection.from_pretrained(base_dir, subfolder="text_encoder_2", **load).to(device),
    ]
    vae = AutoencoderKL.from_pretrained(base_dir, subfolder="vae", variant="fp16", torch_dtype=torch.float32).to(device)
    noise_scheduler = DDPMScheduler.from_pretrained(base_dir, subfolder="scheduler")
    # Trained weights are fp32 (a bf16 UNet would round lr=1e-6 updates away); autocast does the rest.
    unet_dtype = frozen_dtype if cfg.is_lora else torch.float32
    unet = UNet2DConditionModel.from_pretrained(base_dir, subfolder="unet", variant="fp16", torch_dtype=unet_dtype)
    unet.to(device)

    tokens = PivotalTokens(tokenizers, text_encoders, cfg.token_string, cfg.num_new_tokens,
                           generator=torch.Generator(device).manual_seed(cfg.seed))
    unet.requires_grad_(False)
    if cfg.is_lora:
        from peft import LoraConfig

        torch.manual_seed(cfg.seed)  # the gaussian init of lora_A
        unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_rank, init_lora_weights="gaussian",
                                    target_modules=LORA_TARGET_MODULES))
        for p in unet.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    else:
        unet.requires_grad_(True)
    if device.type == "cuda":
        unet.enable_gradient_checkpointing()
    vae.requires_grad_(False)
    for encoder in text_encoders:
        encoder.requires_grad_(False)

    dataset = PreparedDataset(dataset_dir, cfg.resolution, substitute=tokens.substitute)
    data = LatentCache.build(dataset, vae, device)
    del vae  # latents are cached: the VAE is not needed any more
    return TrainState(cfg, accelerator, tokenizers, text_encoders, unet, noise_scheduler, tokens, data, dataset)


def encode_prompts(state: TrainState, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """As StableDiffusionXLPipeline.encode_prompt: penultimate hidden states of both encoders
    concatenated, and the pooled (projected) output of encoder 2."""
    hidden, pooled = [], None
    for tokenizer, encoder in zip(state.tokenizers, state.text_encoders):
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids.to(state.device)
        out = encoder(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = out.text_embeds if hasattr(out, "text_embeds") else out[0]
    return torch.cat(hidden, dim=-1), pooled


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked area of each sample (mask in [0,1], broadcast over channels)."""
    err = (pred.float() - target.float()) ** 2 * mask
    per_sample = err.sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) * pred.shape[1]).clamp_min(1e-6)
    return per_sample.mean()


def loss_on(state: TrainState, indices: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The masked diffusion loss of examples ``indices`` for the given noise and timesteps."""
    latents, masks, time_ids, captions = state.data.batch(indices)
    with state.accelerator.autocast():
        with torch.set_grad_enabled(torch.is_grad_enabled() and state.tokens.training):
            prompt_embeds, pooled = encode_prompts(state, captions)  # encode
        noisy = state.noise_scheduler.add_noise(latents, noise, timesteps)  # noise
        dtype = state.unet.dtype
        pred = state.unet(noisy.to(dtype), timesteps, encoder_hidden_states=prompt_embeds.to(dtype),  # predict
                          added_cond_kwargs={"text_embeds": pooled.to(dtype), "time_ids": time_ids.to(dtype)}).sample
    if state.noise_scheduler.config.prediction_type == "v_prediction":
        target = state.noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    return masked_mse(pred, target, masks)


def make_optimizer(state: TrainState):
    """Group 0: the embeddings at ti_lr; group 1: the LoRA (lora_lr) or the whole UNet (unet_learning_rate)."""
    from diffusers.optimization import get_scheduler

    cfg = state.cfg
    unet_params = [p for p in state.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([
        {"params": state.tokens.parameters(), "lr": cfg.ti_lr, "weight_decay": TI_WEIGHT_DECAY},
        {"params": unet_params, "lr": cfg.lora_lr if cfg.is_lora else cfg.unet_learning_rate,
         "weight_decay": UNET_WEIGHT_DECAY},
    ])
    name = "linear" if cfg.lr_scheduler == "linear" else (
        "constant_with_warmup" if cfg.lr_warmup_steps > 0 else "constant")
    steps = total_steps(cfg, len(state.data))
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=steps)
    return optimizer, scheduler


def pivot(tokens: PivotalTokens, scheduler) -> None:
    """Stop training the embeddings; the schedule of the other group goes on untouched."""
    tokens.stop_training()  # no gradients -> AdamW skips them
    scheduler.lr_lambdas[0] = lambda _step: 0.0  # and their lr is 0 from now on
    scheduler.optimizer.param_groups[0]["lr"] = 0.0


def batches(n: int, batch_size: int, rng: torch.Generator):
    """Epoch after epoch of shuffled dataset indices, in batches (an epoch's last one may be smaller)."""
    while True:
        yield from torch.randperm(n, generator=rng).split(batch_size)


def fit(state: TrainState, work_dir: Path, save_checkpoint=None) -> History:
    """Train for total_steps(cfg); ``save_checkpoint(dir, state)`` is called every checkpointing_steps."""
    from tqdm.auto import tqdm

    cfg, acc = state.cfg, state.accelerator
    n = len(state.data)
    steps = total_steps(cfg, n)
    history = History(pivot_step=max(1, int(steps * cfg.pivot_fraction)), total_steps=steps)
    optimizer, scheduler = make_optimizer(state)
    rng = torch.Generator().manual_seed(cfg.seed)  # data order, noise and timesteps
    num_timesteps = state.noise_scheduler.config.num_train_timesteps
    log.info("training %d steps on %d images, batch %d, seed %d, %s, pivot at step %d",
             steps, n, cfg.train_batch_size, cfg.seed, "LoRA" if cfg.is_lora else "full UNet", history.pivot_step)

    state.tokens.start_training()
    state.unet.train()
    data_order = batches(n, cfg.train_batch_size, rng)
    bar = tqdm(total=steps, desc="training", disable=not cfg.verbose)
    started = time.monotonic()
    for step in range(steps):
        if step == history.pivot_step:
            pivot(state.tokens, scheduler)
            log.info("step %d: pivot - the embeddings stop training", step)
        indices = next(data_order)
        latents_shape = (len(indices), *state.data.latents.shape[1:])
        noise = torch.randn(latents_shape, generator=rng).to(state.device)
        timesteps = torch.randint(0, num_timesteps, (len(indices),), generator=rng).to(state.device)
        loss = loss_on(state, indices, noise, timesteps)

        acc.backward(loss)
        lrs = [group["lr"] for group in optimizer.param_groups]  # the lrs this step uses
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.tokens.restore_frozen_rows()

        record = StepLog(step + 1, loss.item(), lr_unet=lrs[1], lr_ti=lrs[0])
        history.steps.append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record.loss:.4f}", lr=f"{record.lr_unet:.2e}")
        if cfg.verbose or record.step % 50 == 0 or record.step == steps:
            log.info("step %d/%d loss %.5f lr %.3e ti_lr %.3e", record.step, steps, record.loss,
                     record.lr_unet, record.lr_ti)
        if save_checkpoint is not None and record.step % cfg.checkpointing_steps == 0 and record.step < steps:
            path = Path(work_dir) / "checkpoints" / f"checkpoint-{record.step}"
            save_checkpoint(path, state)
            history.checkpoints.append(path)
            log.info("step %d: checkpoint %s", record.step, path)
    bar.close()
    state.unet.eval()
    log.info("trained %d steps in %.1fs", steps, time.monotonic() - started)
    return history
