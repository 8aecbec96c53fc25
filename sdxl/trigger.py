"""Trigger words (``TOK``) and the new tokens they stand for (``<s0><s1>``), one rule for everyone.

The trainer puts the new tokens in place of the trigger word in captions, the predictor in prompts,
the captioner gives BLIP's lowercased spelling its case back; all match the same way: whole words
(``TOK`` but not the ``TOK`` in ``TOKYO`` or ``aTOK``), case-sensitive, as the reference trainer and
predictor (``str.replace`` on the exact spelling).
"""

from __future__ import annotations

import re


def new_token_names(n: int) -> list[str]:
    """The names of the ``n`` tokens pivotal tuning adds: ``<s0>``, ``<s1>``, ..."""
    return [f"<s{i}>" for i in range(n)]


NEW_TOKEN_NAME = re.compile(r"<s\d+>")


def _word(word: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(word)}(?!\w)")


def contains_word(text: str, word: str) -> bool:
    """Whether ``word`` occurs in ``text`` as a whole word, with exactly this spelling."""
    return bool(_word(word).search(text))


def substitute(text: str, word: str, replacement: str) -> str:
    """``text`` with every whole-word ``word`` replaced by ``replacement``."""
    return _word(word).sub(lambda _: replacement, text)
