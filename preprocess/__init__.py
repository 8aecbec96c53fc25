"""Training-data preprocessing: archive intake, upscaling, captions, masks and square crops.

``prepare(input_images, out_dir, ...)`` writes ``out_dir/images/NNNN.png``, ``out_dir/masks/NNNN.png``
and ``out_dir/captions.csv`` (image,mask,caption); bad inputs raise ``PreprocessError``.
"""

from .dataset import prepare
from .errors import PreprocessError

__all__ = ["PreprocessError", "prepare"]
