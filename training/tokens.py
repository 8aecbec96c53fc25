"""Pivotal tuning: ``token_string`` becomes new tokens ``<s0><s1>`` in both tokenizers and text encoders.

Only the new rows of each token-embedding matrix learn; the others are put back from a snapshot
after every optimizer step (the optimizer sees the whole matrix, since a row subset is not a
parameter). At the pivot the embeddings stop training altogether.
"""

from __future__ import annotations

import torch

from sdxl.trigger import new_token_names, substitute

RENORM_POWER = 0.1  # the reference's off_ratio ** 0.1: a gentle pull each step, not a reset


def token_embedding(text_encoder) -> torch.nn.Embedding:
    return text_encoder.get_input_embeddings()


class PivotalTokens:
    """The new tokens, their embedding rows in every text encoder, and the snapshot that guards the rest."""

    def __init__(self, tokenizers, text_encoders, token_string: str, n_tokens: int = 2,
                 generator: torch.Generator | None = None):
        """``generator``: on the text encoders' device (the new rows are drawn there)."""
        self.token_string = token_string
        self.names = new_token_names(n_tokens)
        self.tokenizers, self.text_encoders = list(tokenizers), list(text_encoders)
        self.ids: list[list[int]] = []
        self.frozen_rows: list[torch.Tensor] = []  # bool [vocab]: rows that must not change
        self.snapshots: list[torch.Tensor] = []  # the whole matrix right after the new rows were initialised
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders):
            added = tokenizer.add_tokens(self.names, special_tokens=True)
            if added != len(self.names):
                raise ValueError(f"tokens {self.names} already exist in the tokenizer")
            encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            embedding = token_embedding(encoder)
            embedding.to(torch.float32)  # the trained rows live in fp32
            ids = tokenizer.convert_tokens_to_ids(self.names)
            weight = embedding.weight
            with torch.no_grad():  # the reference's init: random rows with the vocabulary's spread
                std = weight[: ids[0]].std()
                # drawn where the rows live, with a generator on that device (on the CPU: the same draws as ever)
                rows = torch.randn(len(ids), weight.shape[1], generator=generator, device=weight.device,
                                   dtype=weight.dtype) * std
                weight[ids] = rows
            frozen = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
            frozen[ids] = False
            self.ids.append(ids)
            self.frozen_rows.append(frozen)
            self.snapshots.append(weight.detach().clone())
        self.training = False

    @property
    def replacement(self) -> str:
        return "".join(self.names)

    def special_params(self) -> dict[str, str]:
        return {self.token_string: self.replacement}

    def substitute(self, text: str) -> str:
        return substitute(text, self.token_string, self.replacement)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [token_embedding(e).weight for e in self.text_encoders]

    def start_training(self) -> None:
        for encoder in self.text_encoders:
            encoder.requires_grad_(False)
            token_embedding(encoder).weight.requires_grad_(True)
        self.training = True

    def stop_training(self) -> None:
        """The pivot: from here on the embeddings are constants."""
        for p in self.parameters():
            p.requires_grad_(False)
            p.grad = None
        self.training = False

    @torch.no_grad()
    def restore_frozen_rows(self) -> None:
        for p, frozen, snapshot in zip(self.parameters(), self.frozen_rows, self.snapshots):
            p[frozen] = snapshot[frozen]

    @torch.no_grad()
    def renormalize_new_rows(self) -> None:
        """Pull the new rows' spread a step toward the vocabulary's, as the reference's
        ``retract_embeddings`` (and diffusers' advanced SDXL script) do after every optimizer step:
        rows *= (vocabulary std / new rows' std) ** RENORM_POWER.

        Without it a high ``ti_lr`` inflates the trigger tokens until they drown the rest of the
        prompt. Only while the embeddings train: after the pivot they are constants.
        """
        if not self.training:
            return
        for p, frozen, snapshot in zip(self.parameters(), self.frozen_rows, self.snapshots):
            vocab_std = snapshot[frozen].std()
            new = p[~frozen]
            p[~frozen] = new * (vocab_std / new.std()) ** RENORM_POWER

    def new_rows(self) -> dict[str, torch.Tensor]:
        """``embeddings.pti`` content: ``text_encoders_{i}`` = rows of <s0>..<sN-1> in encoder i."""
        return {
            f"text_encoders_{i}": token_embedding(e).weight[ids].detach().float().cpu().contiguous()
            for i, (e, ids) in enumerate(zip(self.text_encoders, self.ids))
        }
