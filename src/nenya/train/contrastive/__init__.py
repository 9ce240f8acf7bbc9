"""SimCLR / SupCon training of SupConResNet on preproc HDF5 cutouts (Nenya's ``train.main``).

Trains on the ``train_key`` partition and validates on ``valid_key`` (Nenya's ``train`` and
``valid``) of ``<data_folder>/<images_file>``, with the augmentations, loss, optimiser and
schedules of Nenya (formats doc §5). Writes ``ckpt_epoch_<E>.pth`` every ``save_freq`` epochs and
``last.pth`` into ``<s3_outdir>/<model_folder>`` (the place ``latents_extraction.prep`` looks), in
Nenya's checkpoint format, plus ``learning_curve.csv``/``.png`` and the options as ``opts.json``.

The package's modules: :mod:`~nenya.train.contrastive.options` (defaults, resolving the opts, the
model folder), :mod:`~nenya.train.contrastive.model` (model, loss and optimiser),
:mod:`~nenya.train.contrastive.schedules` (learning rates and warm-up),
:mod:`~nenya.train.contrastive.epoch` (one pass over a loader), :mod:`~nenya.train.contrastive.run`
(a run's state and its start) and :mod:`~nenya.train.contrastive.trainer` (the epochs, the entry
points). The data it reads is opened by :mod:`nenya.train.data`.

Example:
    >>> from nenya.train.contrastive import train
    >>> last = train("opts.json", max_seconds=60)     # doctest: +SKIP
"""

from __future__ import annotations

from nenya.train.contrastive.epoch import EpochResult, EpochSetup, run_epoch
from nenya.train.contrastive.model import set_model, set_optimizer
from nenya.train.contrastive.options import DEBUG_LIMITS, DEFAULTS, demo_opts, output_folder, prepare_opt
from nenya.train.contrastive.run import TrainSummary
from nenya.train.contrastive.schedules import adjust_learning_rate, epoch_learning_rate, warmup_learning_rate
from nenya.train.contrastive.trainer import main, train, train_run
from nenya.train.data import data_file

__all__ = [
    "DEBUG_LIMITS",
    "DEFAULTS",
    "EpochResult",
    "EpochSetup",
    "TrainSummary",
    "adjust_learning_rate",
    "data_file",
    "demo_opts",
    "epoch_learning_rate",
    "main",
    "output_folder",
    "prepare_opt",
    "run_epoch",
    "set_model",
    "set_optimizer",
    "train",
    "train_run",
    "warmup_learning_rate",
]
