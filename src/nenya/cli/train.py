"""``nenya train contrastive|autoencoder|overfit`` and ``nenya reconstruct``."""

from __future__ import annotations

import argparse

from nenya.cli._latents import HELP_FORMAT

TRAIN_EPILOG = """examples:
  nenya train contrastive --opts opts.json                  SimCLR on <data_folder>/<images_file>
  nenya train contrastive --opts opts.json --auto-resume    continue from the model folder's last.pth
  nenya train autoencoder --data radar.npy --crop 64,none --nlayers 2 --poolsize 4 --num-dense 16 -o ae
  nenya train overfit --data radar.npy --crop 64,none --nlayers 1,2 --poolsize 2,4 --num-dense 4,16,64
  nenya reconstruct ae-model/last.pth data_preproc.h5:valid:12 -o recon
see docs/training.md for every option
"""


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _crop(text: str):
    if text in ("pool", "none", "null"):
        return None if text != "pool" else "pool"
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"--crop takes ROWS,COLS (none keeps an axis) or pool; got {text!r}")
    try:
        return [None if p.strip().lower() in ("none", "null", "") else int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--crop takes ROWS,COLS (none keeps an axis) or pool; got {text!r}") from None


def _common_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (under torchrun: each rank's GPU)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=["fp32", "bf16", "fp16", "auto"],
        help="auto: bf16 on GPUs and on CPUs with native bf16 (avx512_bf16/AMX), else fp32; fp16 on CUDA only",
    )
    p.add_argument("--max-seconds", type=float, default=None, help="stop (and save last.pth) after this many seconds")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the training sub-commands to the ``nenya`` parser."""
    t = sub.add_parser(
        "train",
        help="train a model: contrastive (SupConResNet), autoencoder, overfit search",
        description="Train the models nenya extracts with. See docs/training.md.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tsub = t.add_subparsers(dest="trainer", metavar="TRAINER")
    t.set_defaults(func=lambda args: (t.print_help(), 0)[1])
    _add_contrastive(tsub)
    _add_autoencoder(tsub)
    _add_overfit(tsub)
    _add_reconstruct(sub)


def _add_contrastive(tsub: argparse._SubParsersAction) -> None:
    """``nenya train contrastive``: Nenya's SimCLR / SupCon training."""
    c = tsub.add_parser(
        "contrastive",
        help="SimCLR / SupCon training of SupConResNet on preproc HDF5 cutouts",
        description="Nenya's training: two augmented views per cutout, SupCon/NT-Xent loss, SGD with "
        "cosine or step decay and warm-up. Options come from a Nenya opts JSON; the flags "
        "override them. Writes ckpt_epoch_<E>.pth, last.pth, learning_curve.csv/.png "
        "into <s3_outdir>/<model_folder> (or --output). Several GPUs: "
        "torchrun --nproc_per_node N -m nenya train contrastive ...",
        formatter_class=HELP_FORMAT,
    )
    c.add_argument("--opts", required=True, help="Nenya opts JSON (ssl_model, feat_dim, data_folder, images_file, ...)")
    c.add_argument(
        "--output", "-o", default=None, help="model folder (default: <s3_outdir>/<model_folder> of the opts)"
    )
    c.add_argument("--resume", default=None, help="checkpoint to continue from (its epoch count and optimiser state)")
    c.add_argument(
        "--auto-resume", action="store_true", help="continue from the model folder's last.pth if there is one"
    )
    c.add_argument("--epochs", type=int, default=None, help="override the opts' epochs")
    c.add_argument("--batch-size", type=int, default=None, help="override batch_size_train")
    c.add_argument("--learning-rate", type=float, default=None, help="override learning_rate")
    c.add_argument("--data", default=None, help="override images_file (a preproc .h5 file or URL, or tfrecord:PATTERN)")
    c.add_argument("--feature", default=None, help="TFRecord data: the feature holding the image (opts key: feature)")
    c.add_argument("--shape", default=None, help="TFRecord data: H,W[,C] or a feature holding it (opts key: shape)")
    c.add_argument("--max-train-batches", type=int, default=None, help="at most this many batches per epoch")
    c.add_argument("--max-valid-batches", type=int, default=None, help="at most this many validation batches")
    c.add_argument("--debug", action="store_true", help="2 short epochs into <model_folder>_debug")
    c.add_argument(
        "--eval-column",
        default=None,
        help="metadata column of labels for the kNN accuracy (default: label_column of the opts, if any)",
    )
    c.add_argument(
        "--snapshot-every",
        type=int,
        default=0,
        metavar="N",
        help="every N epochs (and before the first) a PNG of the validation latents",
    )
    c.add_argument("--snapshot", default="pca", choices=["pca", "umap"], help="projection of the snapshots")
    c.add_argument(
        "--snapshot-color", default=None, help="metadata column colouring the snapshots (default: the eval column)"
    )
    c.add_argument("--health-sample", type=int, default=512, help="validation items the health metrics use")
    c.add_argument("--no-health", action="store_true", help="skip the representation metrics")
    c.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    _common_run(c)
    c.set_defaults(func=cmd_train_contrastive)


def _add_autoencoder(tsub: argparse._SubParsersAction) -> None:
    """``nenya train autoencoder``: the convolutional autoencoder."""
    a = tsub.add_parser(
        "autoencoder",
        help="train the convolutional autoencoder (radar-image recipe)",
        description="Conv + max-pool blocks, a dense embedding of --num-dense numbers, a mirrored "
        "decoder; LogCosh loss, Adam. Options from --opts JSON and/or flags (flags win). "
        "Writes ckpt_epoch_<E>.pth and last.pth every num_steps/num_checkpoints steps.",
        formatter_class=HELP_FORMAT,
    )
    a.add_argument("--opts", default=None, help="autoencoder options JSON (keys = the flag names with underscores)")
    a.add_argument("--data", default=None, help="file.h5 (with --partition) or file.h5:train, images.npy, or a folder")
    a.add_argument("--partition", default=None, help="HDF5 partition (default train)")
    a.add_argument("--feature", default=None, help="TFRecord data (tfrecord:PATTERN): the feature holding the image")
    a.add_argument("--shape", default=None, help="TFRecord data: H,W[,C] of the image, or a feature holding it (size)")
    a.add_argument("--output", "-o", default=None, help="model folder (default ae-model)")
    a.add_argument("--nlayers", type=int, default=None, help="conv + pool blocks (default 4)")
    a.add_argument("--poolsize", type=int, default=None, help="pool factor and kernel size (default 4)")
    a.add_argument("--numfilters", type=int, default=None, help="block k has 2**(k+numfilters) channels (default 4)")
    a.add_argument("--num-dense", type=int, default=None, help="embedding length (default 50)")
    a.add_argument("--crop", type=_crop, default=None, help="ROWS,COLS (none keeps an axis), or pool")
    a.add_argument("--crop-offset", type=_ints, default=None, help="ROW,COL of the crop's top-left corner")
    a.add_argument("--demean", action="store_true", default=None, help="subtract each image's mean")
    a.add_argument(
        "--no-standardize",
        dest="standardize",
        action="store_false",
        default=None,
        help="do not scale by the training set's mean/std",
    )
    a.add_argument("--batch-size", type=int, default=None, help="default 8")
    a.add_argument("--num-steps", type=int, default=None, help="total Adam steps (default 1000)")
    a.add_argument("--num-checkpoints", type=int, default=None, help="checkpoints over the run (default 10)")
    a.add_argument("--learning-rate", type=float, default=None, help="Adam learning rate (default 1e-3)")
    a.add_argument("--n-images", type=int, default=None, help="use the first N images only")
    a.add_argument("--seed", type=int, default=None, help="seeds the initialisation and the batch order (default 0)")
    a.add_argument("--num-workers", type=int, default=None, help="reader processes for large files")
    a.add_argument("--resume", default=None, help="checkpoint to continue from")
    a.add_argument("--auto-resume", action="store_true", help="continue from the output folder's last.pth")
    _common_run(a)
    a.set_defaults(func=cmd_train_autoencoder)


def _add_overfit(tsub: argparse._SubParsersAction) -> None:
    """``nenya train overfit``: the smallest autoencoder that overfits a few images."""
    o = tsub.add_parser(
        "overfit",
        help="grid search: the smallest autoencoder that overfits a handful of images",
        description="Train each architecture of the grid on --n-images images and report its final "
        "LogCosh loss; pick the smallest num_dense whose loss reaches --threshold.",
        formatter_class=HELP_FORMAT,
    )
    o.add_argument("--data", required=True, help="file.h5 (with --partition) or file.h5:train, images.npy, or a folder")
    o.add_argument("--partition", default="train", help="HDF5 partition (for a .h5 --data)")
    o.add_argument("--n-images", type=int, default=4, help="images each setting must overfit")
    o.add_argument("--nlayers", type=_ints, default=[2, 3, 4], help="conv + pool blocks: comma-separated grid values")
    o.add_argument("--poolsize", type=_ints, default=[2, 4], help="pool factors: comma-separated grid values")
    o.add_argument(
        "--numfilters", type=_ints, default=[2, 4], help="block k has 2**(k+numfilters) channels: grid values"
    )
    o.add_argument("--num-dense", type=_ints, default=[10, 50, 100], help="embedding lengths: grid values")
    o.add_argument("--num-steps", type=int, default=300, help="Adam steps per setting")
    o.add_argument("--threshold", type=float, default=0.01, help="final loss a setting must reach")
    o.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate")
    o.add_argument("--crop", type=_crop, default=None, help="ROWS,COLS or pool")
    o.add_argument("--demean", action="store_true", help="subtract each image's mean")
    o.add_argument(
        "--no-standardize", dest="standardize", action="store_false", help="do not scale by the images' mean/std"
    )
    o.add_argument("--seed", type=int, default=0, help="seeds each setting's initialisation")
    o.add_argument("--output", "-o", default="overfit.csv", help="CSV table to write")
    o.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.set_defaults(func=cmd_train_overfit)


def _add_reconstruct(sub: argparse._SubParsersAction) -> None:
    """``nenya reconstruct``: decode an embedding or an image with an autoencoder."""
    r = sub.add_parser(
        "reconstruct",
        help="decode an embedding, or an image through its embedding, with an autoencoder",
        description="Writes OUT.npy and OUT.png (and OUT_compare.png for an image input).",
        formatter_class=HELP_FORMAT,
    )
    r.add_argument("checkpoint", help="an autoencoder last.pth (from `nenya train autoencoder`)")
    r.add_argument("input", help="x.npy (embedding (D,)/(N, D) or images), x.npy:ROW, or file.h5:PARTITION:ROW")
    r.add_argument("--output", "-o", default="reconstruction", help="output stem (or .npy path)")
    r.add_argument("--kind", default="auto", choices=["auto", "embedding", "image"], help="what the input is")
    r.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    r.add_argument(
        "--trust-checkpoint", action="store_true", help="allow arbitrary pickled objects (trusted files only)"
    )
    r.set_defaults(func=cmd_reconstruct)


def _print_summary(summary) -> None:
    """Print the last checkpoint and the summary line, from rank 0 only: under torchrun every rank
    returns a summary, and two ranks printing at once interleave their lines."""
    from nenya.ranks import Ranks

    if Ranks.current().is_main:
        print(summary.last, flush=True)
        print(summary.line(), flush=True)


def cmd_train_contrastive(args: argparse.Namespace) -> int:
    """Train SupConResNet from an opts JSON (flags override it); print the last checkpoint and a summary."""
    from nenya.params import Params
    from nenya.train.contrastive import train_run
    from nenya.train.health import HealthOptions

    opt = Params(args.opts)
    for key, value in (
        ("epochs", args.epochs),
        ("batch_size_train", args.batch_size),
        ("learning_rate", args.learning_rate),
        ("images_file", args.data),
        ("feature", args.feature),
        ("shape", args.shape),
    ):
        if value is not None:
            setattr(opt, key, value)
    if args.data is not None:
        setattr(opt, "data_folder", None)  # noqa: B010  # Params holds whatever keys the opts JSON has
    summary = train_run(
        opt,
        max_seconds=args.max_seconds,
        progress=not args.no_progress,
        resume=args.resume,
        auto_resume=args.auto_resume,
        output=args.output,
        device=args.device,
        precision=args.precision,
        debug=args.debug,
        max_train_batches=args.max_train_batches,
        max_valid_batches=args.max_valid_batches,
        compile=args.compile,
        health=HealthOptions(
            eval_column=args.eval_column,
            snapshot_every=args.snapshot_every,
            snapshot=args.snapshot,
            snapshot_color=args.snapshot_color,
            sample=args.health_sample,
            enabled=not args.no_health,
        ),
    )
    _print_summary(summary)
    return 0


def cmd_train_autoencoder(args: argparse.Namespace) -> int:
    """Train the convolutional autoencoder; print the last checkpoint and a summary."""
    from nenya.train.autoencoder import AutoencoderConfig, train_autoencoder

    cfg = AutoencoderConfig.from_json(
        args.opts,
        data=args.data,
        partition=args.partition,
        output=args.output,
        nlayers=args.nlayers,
        poolsize=args.poolsize,
        numfilters=args.numfilters,
        num_dense=args.num_dense,
        crop=args.crop,
        crop_offset=args.crop_offset,
        demean=args.demean,
        standardize=args.standardize,
        batch_size=args.batch_size,
        num_steps=args.num_steps,
        num_checkpoints=args.num_checkpoints,
        learning_rate=args.learning_rate,
        n_images=args.n_images,
        seed=args.seed,
        num_workers=args.num_workers,
        feature=args.feature,
        shape=args.shape,
    )
    summary = train_autoencoder(
        cfg,
        resume=args.resume,
        auto_resume=args.auto_resume,
        device=args.device,
        precision=args.precision,
        max_seconds=args.max_seconds,
        progress=not args.no_progress,
    )
    _print_summary(summary)
    return 0


def cmd_train_overfit(args: argparse.Namespace) -> int:
    """Run the overfit grid search; print the table and where it was written."""
    from nenya.train.autoencoder import overfit_search

    result = overfit_search(
        args.data,
        partition=args.partition,
        n_images=args.n_images,
        nlayers=args.nlayers,
        poolsize=args.poolsize,
        numfilters=args.numfilters,
        num_dense=args.num_dense,
        num_steps=args.num_steps,
        threshold=args.threshold,
        learning_rate=args.learning_rate,
        crop=args.crop,
        demean=args.demean,
        standardize=args.standardize,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
        output=args.output,
    )
    print(result.table())
    print(f"table written to {args.output}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    """Decode an embedding (or an image through its embedding); print the files written."""
    from nenya.train.autoencoder import reconstruct

    rec = reconstruct(
        args.checkpoint,
        args.input,
        args.output,
        kind=args.kind,
        device=args.device,
        trust_checkpoint=args.trust_checkpoint,
    )
    print(f"{rec.kind} -> reconstruction of shape {rec.shape}")
    for path in [rec.npy, *rec.pngs]:
        print(path)
    return 0
