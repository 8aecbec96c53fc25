"""Weight sets: where each comes from (production tars, Hugging Face, tiny generated) and resolving them to disk."""

from .sets import WEIGHT_SETS, flavour, is_tiny, local_dir, resolve, source

__all__ = ["WEIGHT_SETS", "flavour", "is_tiny", "local_dir", "resolve", "source"]
