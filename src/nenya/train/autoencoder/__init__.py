"""Training of the convolutional autoencoder (radar-image recipe), the overfit search, and reconstruction.

Images (a preproc HDF5 partition, a ``.npy`` array, or an image folder) are cropped to
``crop``, normalised (optional per-image demean; per-channel mean/std of the training set), and
the autoencoder is fitted with the LogCosh loss and Adam for ``num_steps`` steps of random batches.
Every ``num_steps / num_checkpoints`` steps (a "virtual epoch") it writes ``ckpt_epoch_<E>.pth`` and
``last.pth`` with the architecture and preprocessing in ``opt``, so ``ae:last.pth`` extracts with it.

The package's modules: :mod:`~nenya.train.autoencoder.options` (the configuration, crop and
normalisation), :mod:`~nenya.train.autoencoder.trainer` (a run), :mod:`~nenya.train.autoencoder.overfit`
(the overfit search) and :mod:`~nenya.train.autoencoder.reconstruction` (decoding back into images);
the LogCosh loss is in :mod:`nenya.train.losses`.
"""

from __future__ import annotations

from nenya.train.autoencoder.options import AutoencoderConfig, crop_box
from nenya.train.autoencoder.overfit import OverfitResult, OverfitRow, overfit_search
from nenya.train.autoencoder.reconstruction import Reconstruction, load_autoencoder, read_input, reconstruct
from nenya.train.autoencoder.trainer import AutoencoderSummary, train_autoencoder
from nenya.train.losses import logcosh

__all__ = [
    "AutoencoderConfig",
    "AutoencoderSummary",
    "OverfitResult",
    "OverfitRow",
    "Reconstruction",
    "crop_box",
    "load_autoencoder",
    "logcosh",
    "overfit_search",
    "read_input",
    "reconstruct",
    "train_autoencoder",
]
