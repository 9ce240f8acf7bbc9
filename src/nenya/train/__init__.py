"""Training of the encoders nenya extracts with: contrastive (SupConResNet) and the autoencoder.

``nenya.train.main(opt_path, debug=False)`` is Nenya's entry point; see
:mod:`nenya.train.contrastive` and :mod:`nenya.train.autoencoder`.
"""

from __future__ import annotations

import os

__all__ = ["main"]


def main(opt_path: str | os.PathLike, debug: bool = False, load_epoch: int | None = None) -> str:
    """Train SupConResNet with an opts JSON (Nenya's ``nenya.train.main``); returns the location of last.pth.

    ``debug=True`` runs 2 short epochs into ``<model_folder>_debug``; ``load_epoch`` resumes from
    ``ckpt_epoch_<load_epoch>.pth`` in the model folder.
    """
    from nenya.train.contrastive import main as _main

    return _main(opt_path, debug=debug, load_epoch=load_epoch)
