"""The training loop: encode -> noise -> predict -> masked loss -> step -> restore and renormalise the
embeddings -> checkpoint."""

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
    model: torch.nn.Module | None = None  # what the forward pass calls: the UNet, or its DDP wrapper (several processes)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def world(self) -> int:
        return self.accelerator.num_processes


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


def total_steps(cfg: TrainConfig, n_examples: int, world: int = 1) -> int:
    """max_train_steps wins over num_train_epochs; 0 means: train num_train_epochs epochs (of global
    batches: train_batch_size per process)."""
    if cfg.max_train_steps > 0:
        return cfg.max_train_steps
    return cfg.num_train_epochs * math.ceil(n_examples / (cfg.train_batch_size * world))


def make_accelerator():
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    if cuda:  # as reproducible as CUDA gets (bitwise only on CPU: some CUDA kernels are not deterministic)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return Accelerator(mixed_precision="bf16" if cuda else "no", cpu=not cuda)


def release_memory() -> None:
    """Give the memory of a finished training back (the caller dropped its TrainState)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def variant_in(base_dir: Path, subfolder: str) -> str | None:
    """The weight variant of ``base_dir/subfolder``, detected as the predictor does (sdxl.models.variant_of),
    per folder: the production layout is fp16 throughout, a Hugging Face snapshot has no variant, and the
    fp16-fix VAE beside fp16 files has none either."""
    from sdxl.models import variant_of

    variant = variant_of(Path(base_dir))
    if variant and not any((Path(base_dir) / subfolder).glob(f"*.{variant}.safetensors")):
        return None
    return variant


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
    def load(cls, subfolder, dtype=torch.float32):
        return cls.from_pretrained(base_dir, subfolder=subfolder, variant=variant_in(base_dir, subfolder),
                                   torch_dtype=dtype)

    tokenizers = [CLIPTokenizer.from_pretrained(base_dir, subfolder=s) for s in ("tokenizer", "tokenizer_2")]
    text_encoders = [
        load(CLIPTextModel, "text_encoder").to(device),
        load(CLIPTextModelWithProjection, "text_encoder_2").to(device),
    ]
    vae = load(AutoencoderKL, "vae").to(device)
    noise_scheduler = DDPMScheduler.from_pretrained(base_dir, subfolder="scheduler")
    # Trained weights are fp32 (a bf16 UNet would round lr=1e-6 updates away); autocast does the rest.
    unet = load(UNet2DConditionModel, "unet", frozen_dtype if cfg.is_lora else torch.float32)
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
    model = unet
    if accelerator.num_processes > 1:  # data parallel: accelerate wraps the UNet in DDP (its gradients all-reduced)
        model = accelerator.prepare(unet)
    return TrainState(cfg, accelerator, tokenizers, text_encoders, unet, noise_scheduler, tokens, data, dataset, model)


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


def masked_mse_per_sample(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked area of each sample (mask in [0,1], broadcast over channels)."""
    err = (pred.float() - target.float()) ** 2 * mask
    return err.sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) * pred.shape[1]).clamp_min(1e-6)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return masked_mse_per_sample(pred, target, mask).mean()


def min_snr_weights(noise_scheduler, timesteps: torch.Tensor, snr_gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights per sample, as diffusers' training scripts compute them: min(SNR, gamma) / SNR
    for epsilon prediction, / (SNR + 1) for v-prediction (diffusers.training_utils.compute_snr)."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    weights = torch.clamp(snr, max=snr_gamma)
    if noise_scheduler.config.prediction_type == "v_prediction":
        return weights / (snr + 1)
    return weights / snr


def loss_on(state: TrainState, indices: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The masked diffusion loss of examples ``indices`` for the given noise and timesteps."""
    latents, masks, time_ids, captions = state.data.batch(indices)
    with state.accelerator.autocast():
        with torch.set_grad_enabled(torch.is_grad_enabled() and state.tokens.training):
            prompt_embeds, pooled = encode_prompts(state, captions)  # encode
        noisy = state.noise_scheduler.add_noise(latents, noise, timesteps)  # noise
        dtype = state.unet.dtype
        model = state.unet if state.model is None else state.model
        pred = model(noisy.to(dtype), timesteps, encoder_hidden_states=prompt_embeds.to(dtype),  # predict
                     added_cond_kwargs={"text_embeds": pooled.to(dtype), "time_ids": time_ids.to(dtype)}).sample
    if state.noise_scheduler.config.prediction_type == "v_prediction":
        target = state.noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    per_sample = masked_mse_per_sample(pred, target, masks)
    if state.cfg.snr_gamma is not None:
        per_sample = per_sample * min_snr_weights(state.noise_scheduler, timesteps, state.cfg.snr_gamma).to(per_sample)
    return per_sample.mean()


def make_optimizer(state: TrainState):
    """Group 0: the embeddings at ti_lr; group 1: the LoRA (lora_lr) or the whole UNet (unet_learning_rate).
    AdamW for a LoRA, Adafactor for a full fine-tune (``memory``: it fits 48 GB)."""
    from diffusers.optimization import get_scheduler

    cfg = state.cfg
    unet_params = [p for p in state.unet.parameters() if p.requires_grad]
    groups = [
        {"params": state.tokens.parameters(), "lr": cfg.ti_lr, "weight_decay": TI_WEIGHT_DECAY},
        {"params": unet_params, "lr": cfg.lora_lr if cfg.is_lora else cfg.unet_learning_rate,
         "weight_decay": UNET_WEIGHT_DECAY},
    ]
    if cfg.is_lora:
        optimizer = torch.optim.AdamW(groups)
    else:  # the full fine-tune's memory plan (training/memory.py): Adafactor at a fixed lr
        from transformers.optimization import Adafactor

        optimizer = Adafactor(groups, lr=cfg.unet_learning_rate, relative_step=False, scale_parameter=False,
                              warmup_init=False)
    # lr_warmup_steps is "for lr schedulers with warmups" (the documented input): "linear" warms up,
    # "constant" is constant from the first step - as the reference, which hands both to get_scheduler.
    steps = total_steps(cfg, len(state.data), state.world)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                              num_training_steps=steps)
    return optimizer, scheduler


def pivot(tokens: PivotalTokens, scheduler) -> None:
    """Stop training the embeddings; the schedule of the other group goes on untouched."""
    tokens.stop_training()  # no gradients -> AdamW skips them
    scheduler.lr_lambdas[0] = lambda _step: 0.0  # and their lr is 0 from now on
    scheduler.optimizer.param_groups[0]["lr"] = 0.0


def shard_loss(state: TrainState, indices: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """This process's part of the global batch's loss, scaled so that the mean DDP takes over the processes
    is the global batch's mean loss (shards may differ in size at an epoch's end; an empty shard runs one
    example at weight 0, so every process takes part in the all-reduce)."""
    accelerator = state.accelerator
    part = torch.arange(len(indices)).tensor_split(state.world)[accelerator.process_index]
    if len(part) == 0:
        return loss_on(state, indices[:1], noise[:1], timesteps[:1]) * 0.0
    loss = loss_on(state, indices[part], noise[part.to(noise.device)], timesteps[part.to(timesteps.device)])
    return loss * (len(part) * state.world / len(indices))


def batches(n: int, batch_size: int, rng: torch.Generator):
    """Epoch after epoch of shuffled dataset indices, in batches (an epoch's last one may be smaller)."""
    while True:
        yield from torch.randperm(n, generator=rng).split(batch_size)


def fit(state: TrainState, work_dir: Path, save_checkpoint=None) -> History:
    """Train for total_steps(cfg); ``save_checkpoint(dir, state)`` is called every checkpointing_steps."""
    from tqdm.auto import tqdm

    cfg, accelerator = state.cfg, state.accelerator
    n, world = len(state.data), state.world
    steps = total_steps(cfg, n, world)
    history = History(pivot_step=max(1, int(steps * cfg.pivot_fraction)), total_steps=steps)
    optimizer, scheduler = make_optimizer(state)
    rng = torch.Generator().manual_seed(cfg.seed)  # data order, noise and timesteps: the same in every process
    num_timesteps = state.noise_scheduler.config.num_train_timesteps
    log.info("training %d steps on %d images, batch %d x %d process(es), seed %d, %s, pivot at step %d",
             steps, n, cfg.train_batch_size, world, cfg.seed, "LoRA" if cfg.is_lora else "full UNet",
             history.pivot_step)

    state.tokens.start_training()
    state.unet.train()
    data_order = batches(n, cfg.train_batch_size * world, rng)
    bar = tqdm(total=steps, desc="training", disable=not cfg.verbose or not accelerator.is_main_process)
    started = time.monotonic()
    for step in range(steps):
        if step == history.pivot_step:
            pivot(state.tokens, scheduler)
            log.info("step %d: pivot - the embeddings stop training", step)
        indices = next(data_order)  # the global batch
        latents_shape = (len(indices), *state.data.latents.shape[1:])
        noise = torch.randn(latents_shape, generator=rng).to(state.device)
        timesteps = torch.randint(0, num_timesteps, (len(indices),), generator=rng).to(state.device)
        if cfg.noise_offset:  # diffusers' --noise_offset; drawn only when set: the default random stream stays
            offset = torch.randn((*latents_shape[:2], 1, 1), generator=rng).to(state.device)
            noise = noise + cfg.noise_offset * offset
        if world == 1:
            loss = loss_on(state, indices, noise, timesteps)
        else:
            loss = shard_loss(state, indices, noise, timesteps)

        accelerator.backward(loss)
        if world > 1 and state.tokens.training:  # the UNet's grads are DDP's; the embeddings' are reduced here
            for p in state.tokens.parameters():
                p.grad = accelerator.reduce(p.grad, reduction="mean")
        lrs = [group["lr"] for group in optimizer.param_groups]  # the lrs this step uses
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.tokens.restore_frozen_rows()
        state.tokens.renormalize_new_rows()

        record = StepLog(step + 1, loss.item(), lr_unet=lrs[1], lr_ti=lrs[0])
        history.steps.append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record.loss:.4f}", lr=f"{record.lr_unet:.2e}")
        if cfg.verbose or record.step % 50 == 0 or record.step == steps:
            log.info("step %d/%d loss %.5f lr %.3e ti_lr %.3e", record.step, steps, record.loss,
                     record.lr_unet, record.lr_ti)
        if (save_checkpoint is not None and record.step % cfg.checkpointing_steps == 0 and record.step < steps
                and accelerator.is_main_process):
            path = Path(work_dir) / "checkpoints" / f"checkpoint-{record.step}"
            save_checkpoint(path, state)
            history.checkpoints.append(path)
            log.info("step %d: checkpoint %s", record.step, path)
    bar.close()
    state.unet.eval()
    log.info("trained %d steps in %.1fs", steps, time.monotonic() - started)
    return history
