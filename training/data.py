"""The prepared dataset (``images/``, ``masks/``, ``captions.csv``) and its VAE latents, cached once per image."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CAPTIONS_CSV = "captions.csv"


@dataclass(frozen=True)
class PreparedExample:
    """One row of a prepared dataset (written by ``preprocess.prepare``): file paths and the caption."""
    image: Path
    mask: Path | None
    caption: str
    # SDXL micro-conditioning; the prepared images are already square crops at `resolution`,
    # so unless the csv says otherwise, original size = target size and the crop starts at 0,0.
    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]


class PreparedDataset:
    """Examples of a prepared directory, captions with ``token_string`` already substituted."""

    def __init__(self, root: Path, resolution: int, substitute=lambda caption: caption):
        self.root = Path(root)
        self.resolution = resolution
        csv_path = self.root / CAPTIONS_CSV
        if not csv_path.is_file():
            raise FileNotFoundError(f"prepared dataset {self.root} has no {CAPTIONS_CSV}")
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            raise ValueError(f"prepared dataset {self.root} has no images")
        self.examples = [self._example(row, substitute) for row in rows]

    def _example(self, row: dict, substitute) -> PreparedExample:
        r = self.resolution
        mask = row.get("mask") or None
        return PreparedExample(
            image=self.root / row["image"],
            mask=self.root / mask if mask else None,
            caption=substitute(row["caption"]),
            original_size=(int(row.get("original_height") or r), int(row.get("original_width") or r)),
            crop_top_left=(int(row.get("crop_top") or 0), int(row.get("crop_left") or 0)),
        )

    def __len__(self) -> int:
        return len(self.examples)

    def pixels(self, i: int) -> torch.Tensor:
        """Image ``i`` as [3, r, r] in [-1, 1]."""
        image = Image.open(self.examples[i].image).convert("RGB")
        if image.size != (self.resolution, self.resolution):
            image = image.resize((self.resolution, self.resolution), Image.BICUBIC)
        array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
        return array.permute(2, 0, 1).contiguous()

    def mask(self, i: int) -> torch.Tensor:
        """Mask ``i`` as [1, r, r] in [0, 1] (1 = what matters); all ones when there is none."""
        path = self.examples[i].mask
        if path is None:
            return torch.ones(1, self.resolution, self.resolution)
        mask = Image.open(path).convert("L")
        if mask.size != (self.resolution, self.resolution):
            mask = mask.resize((self.resolution, self.resolution), Image.BILINEAR)
        return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None]

    def time_ids(self, i: int) -> torch.Tensor:
        """SDXL add_time_ids: original size, crop top-left, target size."""
        e = self.examples[i]
        return torch.tensor([*e.original_size, *e.crop_top_left, self.resolution, self.resolution], dtype=torch.float32)


@dataclass
class LatentCache:
    """Per dataset index: the VAE latent (scaled), the mask at latent size, the time ids, the caption."""

    latents: torch.Tensor  # [N, 4, r/8, r/8]
    masks: torch.Tensor  # [N, 1, r/8, r/8]
    time_ids: torch.Tensor  # [N, 6]
    captions: list[str]

    @classmethod
    @torch.no_grad()
    def build(cls, dataset: PreparedDataset, vae, device: torch.device) -> "LatentCache":
        latents, masks = [], []
        for i in range(len(dataset)):  # one image at a time: each is encoded exactly once
            pixels = dataset.pixels(i)[None].to(device, dtype=vae.dtype)
            latent = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
            latents.append(latent.float().cpu())
            masks.append(F.interpolate(dataset.mask(i)[None], size=latent.shape[-2:], mode="area"))
        return cls(
            latents=torch.cat(latents).to(device),
            masks=torch.cat(masks).to(device),
            time_ids=torch.stack([dataset.time_ids(i) for i in range(len(dataset))]).to(device),
            captions=[e.caption for e in dataset.examples],
        )

    def __len__(self) -> int:
        return len(self.captions)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        idx = indices.to(self.latents.device)
        return self.latents[idx], self.masks[idx], self.time_ids[idx], [self.captions[int(i)] for i in indices]
