"""LoRA: reference-format trained tars through predict() versus diffusers' own load_lora_weights /
unload_lora_weights (+ load/unload_textual_inversion for embeddings.pti) on the same pipeline.

Ours is predict(replicate_weights=...) with generation stubbed out, minus predict() with generation stubbed
out and nothing to change: what a request pays for its weights (cache lookup, tar extraction on a miss,
reading and checking the files, unloading the previous fine-tune, loading the new one).
The baseline loads the same extracted files with diffusers' documented calls, no cache, no checks.
"""

from __future__ import annotations

import os
import sys
import tarfile
import tempfile
from pathlib import Path

from PIL import Image

from . import common
from .common import Row

RANK = {"tiny": 4, "full": 32}


def _reference_lora_tar():
    from devkit.reference_tars import reference_lora_tar

    return reference_lora_tar


class DiffusersLora:
    """What a diffusers user writes to apply the same tar's files."""

    def __init__(self, pipe, directory: Path):
        self.pipe, self.dir = pipe, directory

    def load(self) -> None:
        from safetensors.torch import load_file

        pipe = self.pipe
        # legacy attn-processor keys: diffusers converts them itself once they carry the "unet." prefix
        dtype = pipe.unet.dtype
        state = {f"unet.{k}": v.to(dtype) for k, v in load_file(self.dir / "lora.safetensors").items()}
        pipe.load_lora_weights(state, adapter_name="bench")
        if "bench" not in (getattr(pipe.unet, "peft_config", None) or {}):
            raise RuntimeError("diffusers baseline: the LoRA was not injected")
        emb = load_file(self.dir / "embeddings.pti")
        tokens = [f"<s{i}>" for i in range(emb["text_encoders_0"].shape[0])]
        for i, (enc, tok) in enumerate(((pipe.text_encoder, pipe.tokenizer), (pipe.text_encoder_2, pipe.tokenizer_2))):
            pipe.load_textual_inversion(list(emb[f"text_encoders_{i}"].to(enc.dtype)), token=tokens,
                                        text_encoder=enc, tokenizer=tok)
        self.tokens = tokens

    def unload(self) -> None:
        pipe = self.pipe
        pipe.unload_lora_weights()
        for enc, tok in ((pipe.text_encoder, pipe.tokenizer), (pipe.text_encoder_2, pipe.tokenizer_2)):
            pipe.unload_textual_inversion(tokens=self.tokens, tokenizer=tok, text_encoder=enc)


def run(p, size: str, device: str, quick: bool) -> list[Row]:
    import predict as predict_module
    from weights.cache import WeightsCache

    from .predict_overhead import REQUEST

    work = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    os.environ["SDXL_LOCAL_WEIGHTS_DIR"] = str(work)  # the operator's opt-in for the tars named by path
    make_tar = _reference_lora_tar()
    unet = p.models.base.unet
    dims = p.finetunes.shapes.embedding_dims
    tars = {name: make_tar(work / f"{name}.tar", unet, rank=RANK[size], seed=seed, te_dims=dims)
            for name, seed in (("A", 1), ("B", 2))}
    dirs = {}
    for name, tar in tars.items():
        dirs[name] = work / f"{name}.extracted"
        with tarfile.open(tar) as t:
            t.extractall(dirs[name], filter="data")
    lora_bytes = (dirs["A"] / "lora.safetensors").stat().st_size

    real_generate = predict_module.generate
    predict_module.generate = lambda models, s, **kw: [Image.new("RGB", (8, 8))]
    req = {**REQUEST, "disable_safety_checker": True}

    def ours(weights) -> float:
        return common.timed(lambda: p.predict(**{**req, "replicate_weights": str(weights) if weights else None}),
                            device)[0]

    baseline = {name: DiffusersLora(p.models.base, d) for name, d in dirs.items()}
    repeats = 1 if quick else 3  # full size too: each operation is ~0.1-1.5 s
    t: dict[str, list[float]] = {k: [] for k in (
        "none", "first", "reuse", "switch", "base", "d_load", "d_switch", "d_unload")}
    try:
        # warm-up: first-use costs (peft imports, injection code paths) paid outside the figures
        baseline["A"].load(), baseline["A"].unload()
        for rep in range(repeats + 1):
            p.cache = WeightsCache(work / f"cache-{rep}")  # a cold cache: the first request extracts the tar
            t["none"] += [min(ours(None) for _ in range(5))]
            t["first"].append(ours(tars["A"]))
            t["reuse"].append(min(ours(tars["A"]) for _ in range(5)))
            ours(tars["B"])  # into the cache
            t["switch"].append(min(ours(tars["A"]), ours(tars["B"])))  # cache hits: unload one, load the other
            t["base"].append(ours(None))
            bA, bB = baseline["A"], baseline["B"]
            t["d_load"].append(common.timed(bA.load, device)[0])
            t["d_switch"].append(common.timed(lambda: (bA.unload(), bB.load()), device)[0])
            t["d_unload"].append(common.timed(bB.unload, device)[0])
    finally:
        predict_module.generate = real_generate
    best = {k: min(v[1:] if len(v) > 1 else v) for k, v in t.items()}  # rep 0 is a warm-up
    none = best["none"]

    def runs(ours_key: str, base_key: str) -> str:  # every repeat after the warm-up one: the spread
        ours_runs = [x - none for x in t[ours_key][1:]] or [t[ours_key][0] - none]
        return common.spread({"ours": ours_runs, "baseline": t[base_key][1:] or t[base_key]})
    area = f"lora/{size}"
    note = f"rank {RANK[size]}, {lora_bytes / 1e6:.0f} MB fp32"
    return [
        Row(area, "first load (cold cache: extract + read + load)", best["first"] - none, best["d_load"],
            note=f"{note}; baseline: load_lora_weights + 2x load_textual_inversion"),
        Row(area, "reuse, same replicate_weights (added to predict)", max(best["reuse"] - none, 0.0), None,
            target=0.050, absolute=True, note="baseline would reload; absolute target"),
        Row(area, "switch A->B (cache hit)", best["switch"] - none, best["d_switch"], target=1.0,
            note=f"baseline: unload_lora_weights + unload_ti + load B; runs: {runs('switch', 'd_switch')}"),
        Row(area, "back to base", best["base"] - none, best["d_unload"], target=1.0,
            note=f"baseline: unload_lora_weights + 2x unload_textual_inversion; runs: {runs('base', 'd_unload')}"),
    ]


def main(argv=None) -> None:
    a = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    common.use_weights(a.size)
    p = common.make_predictor(a.size, a.device, compile=False)  # compiled/fused modules and peft do not mix
    common.write_rows(run(p, a.size, a.device, a.quick), a.out)


if __name__ == "__main__":
    sys.exit(main())
