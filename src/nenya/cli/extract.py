"""``nenya extract``: latent vectors of preproc files, image folders and path tables."""

from __future__ import annotations

import argparse
import logging
import sys

from nenya._errors import NenyaError
from nenya.cli._latents import HELP_FORMAT
from nenya.device import PRECISIONS
from nenya.encoders import encoders
from nenya.engines import engines
from nenya.sinks import sinks

log = logging.getLogger("nenya")

EPILOG = """examples:
  nenya demo                                   make sample data, a model, and latents
  nenya extract data/*_preproc.h5 --model supcon:models/last.pth --output latents/
  nenya extract s3://bucket/x_preproc.h5 --opts opts.json --format parquet
  nenya extract --source images:photos/ --model torchvision:resnet50 --pretrained --output vectors.parquet
  nenya extract --source images:hotels/ --model timm:efficientnet_b0 --layer 4 --pool none --size 256 -o tiles.parquet
  nenya extract --source table:images.csv --id-column image_id --model timm:resnet50 -o vectors.npy
  torchrun --nproc-per-node 4 -m nenya extract data/*_preproc.h5 --model supcon:last.pth -o latents/
  nenya extract --source images:photos/ --model timm:resnet50 --devices 2 -o vectors.parquet
  nenya extract s3://bucket/*_preproc.h5 --model supcon:s3://bucket/last.pth --engine ray --address auto -o s3://bucket/latents/
  nenya models                                 how to name a model
"""


def register(sub) -> None:
    """Add ``nenya extract`` to the ``nenya`` parser."""
    p = sub.add_parser(
        "extract",
        help="latent vectors of Nenya preproc HDF5 files, image folders or path tables",
        description="Encode every cutout of each preproc file (local or URL) and write one latents file per "
        "input (Nenya's _latents.h5 layout, Parquet or npy); or encode an image folder / path table "
        "(--source) into one Parquet or npy output. Finished outputs are skipped (image collections: "
        "only new ids are added), and an interrupted run resumes where it stopped when given the "
        "same command.",
        formatter_class=HELP_FORMAT,
    )
    _add_inputs_and_outputs(p)
    _add_photo_options(p)
    _add_table_options(p)
    _add_run_options(p)
    _add_engine_options(p)
    p.set_defaults(func=cmd_extract)


#: kinds of the source registry that --source cannot name: preproc files are given as arguments,
#: arrays come from Python
_NOT_BY_SOURCE = ("h5", "arrays")


def _source_help() -> str:
    """--source's help: every kind of the source registry it takes (without importing them)."""
    from nenya.sources import sources

    kinds = ", ".join(f"{k}:" for k in sources.names() if k not in _NOT_BY_SOURCE)
    return (
        f"an input collection instead of preproc files, local or URL, with KIND one of {kinds} "
        "(e.g. images:FOLDER, table:FILE.csv|FILE.parquet; `nenya models` says what each kind takes)"
    )


def _add_inputs_and_outputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", help="preproc .h5 files, globs or URLs (s3://...)")
    p.add_argument("--source", metavar="KIND:WHERE", help=_source_help())
    p.add_argument(
        "--model",
        help=f"model spec: {', '.join(k + ':...' for k in encoders.names())}, or a checkpoint "
        "path (default: the model of --opts, as Nenya's prep())",
    )
    p.add_argument("--opts", help="Nenya opts JSON (model options for a checkpoint without them)")
    p.add_argument(
        "--output",
        "-o",
        help="output folder or URL for preproc files (default: <s3_outdir>/"
        "<latents_folder> of --opts); output file (.parquet or .npy) for --source",
    )
    p.add_argument(
        "--format",
        choices=sinks.names(),
        default=None,
        help="output format (default: h5 for preproc files; from the output's extension for --source)",
    )
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="vector type in Parquet/npy")


def _add_photo_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("photo models (timm:, torchvision:, torchscript:)")
    g.add_argument("--weights", help="weights file (safetensors or a state dict; loaded safely)")
    g.add_argument("--pretrained", action="store_true", help="the model hub's pretrained weights (needs network)")
    g.add_argument("--layer", type=int, help="feature level K of an inner layer instead of the pooled vector")
    g.add_argument("--pool", choices=["avg", "max", "gem", "none"], help="pooling; none = one vector per tile")
    g.add_argument("--size", type=int, help="input size in pixels (square), overriding the model's data config")
    g.add_argument("--resize", type=int, help="shorter side to resize to before the center crop")
    g.add_argument("--no-crop", action="store_true", help="resize straight to --size instead of resize + center crop")
    g.add_argument("--mean", type=_floats, help="per-channel mean, e.g. 0.485,0.456,0.406")
    g.add_argument("--std", type=_floats, help="per-channel std, e.g. 0.229,0.224,0.225")
    g.add_argument(
        "--interpolation",
        choices=["bilinear", "bicubic", "nearest", "lanczos"],
        help="resize filter (default: the model's data config)",
    )
    g.add_argument(
        "--decode",
        choices=["cpu", "gpu"],
        default="cpu",
        help="where JPEGs are decoded: cpu (reader processes, default) or gpu (nvjpeg on the encoder's "
        "CUDA device, resized there; other formats stay on the CPU; falls back to cpu with a warning)",
    )
    g.add_argument(
        "--max-pixels",
        type=int,
        help="skip images with more pixels than this (decompression bombs; default 89,478,485 as Pillow)",
    )


def _add_table_options(p: argparse.ArgumentParser) -> None:
    t = p.add_argument_group("path tables (--source table:FILE)")
    t.add_argument(
        "--path-column", default="path", help="column of image paths (absolute, relative to the table, URLs)"
    )
    t.add_argument("--id-column", help="column of ids (default: the path)")
    t.add_argument(
        "--columns", type=lambda s: tuple(c for c in s.split(",") if c), help="metadata columns to carry (default: all)"
    )
    r = p.add_argument_group("records (--source tfrecord:PATTERN)")
    r.add_argument("--feature", help="the feature holding the image (a float/int list, or bytes)")
    r.add_argument("--shape", help="H,W or H,W,C of the image, or the name of an int feature holding it (HRRR: size)")
    r.add_argument("--id-feature", help="a one-value feature whose values are the ids (default: <file>/<record>)")
    h = p.add_argument_group("Hugging Face datasets (--source hf:PATH; --id-column and --columns apply too)")
    h.add_argument("--split", help="the split to read (default: train, or the only one)")
    h.add_argument(
        "--image-column", help="the column of images ({bytes, path} or bytes; default: the first {bytes, path} one)"
    )
    g = p.add_argument_group("gridded fields (--source xarray:FILE.nc|STORE.zarr)")
    g.add_argument("--var", help="the variable (default: the only one with 2+ dimensions)")
    g.add_argument("--sample-dim", help="the dimension of samples, e.g. time (default: the first of three)")
    g.add_argument("--tile", type=int, help="cut each field into TILE x TILE cutouts (default: whole fields)")
    g.add_argument("--stride", type=int, help="pixels between tiles (default: the tile size)")
    g.add_argument(
        "--max-nan-fraction",
        type=float,
        default=0.5,
        help="skip tiles with more NaN pixels (recorded in the status table); below it NaNs are filled "
        "with the tile's valid mean",
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--partitions", default="train,valid", help="comma-separated partitions to extract, where present")
    p.add_argument("--batch-size", type=int, default=128, help="items encoded together")
    p.add_argument("--workers", type=int, default=None, help="reader processes (default: 1 when there are 2+ cores)")
    p.add_argument("--shard-size", type=int, default=4096, help="items per unit of commit and resume")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--precision",
        default=None,  # fp32; None tells the default from a typed --precision fp32 (the bf16 hint)
        choices=list(PRECISIONS),
        help="auto: bf16 on GPUs and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32 (default: fp32)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model (falls back to eager on failure)")
    p.add_argument(
        "--clobber",
        "--overwrite",
        action="store_true",
        dest="clobber",
        help="redo files whose output exists, discarding unfinished work of another configuration",
    )
    p.add_argument("--debug", action="store_true", help="a few batches per partition only, into *_latents_debug.*")
    p.add_argument("--max-skip-fraction", type=float, default=None, help="fail when more than this fraction is skipped")
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow arbitrary pickled objects in the checkpoint (only for files you trust: this can run code)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    e = p.add_argument_group("engines: where shards run (docs/scaling.md)")
    e.add_argument(
        "--engine",
        choices=["auto", *engines.names()],
        default="auto",
        help="auto: torchrun ranks when RANK/WORLD_SIZE are set (torchrun, --devices), else this process",
    )
    e.add_argument(
        "--devices",
        type=int,
        default=None,
        metavar="N",
        help="run N local ranks (one per GPU: cuda:0..N-1; on CPU the cores are split between them)",
    )
    e.add_argument(
        "--rank-timeout",
        type=float,
        default=1800.0,
        metavar="S",
        help="rank 0 gives up when no shard was committed for S seconds while waiting for the others",
    )
    e.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: auto, ray://HOST:10001 or HOST:PORT (default: start a local one)",
    )
    e.add_argument(
        "--actors",
        type=int,
        default=None,
        metavar="K",
        help="Ray encoder actors (default: as many as the cluster's GPUs / CPUs allow)",
    )
    e.add_argument(
        "--gpus-per-actor",
        type=float,
        default=None,
        metavar="G",
        help="GPUs per Ray actor (default 1 when the cluster has GPUs, else 0)",
    )
    e.add_argument("--cpus-per-actor", type=float, default=1.0, metavar="C", help="CPUs per Ray actor")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _encoder_options(args):
    from nenya.encoders.base import EncoderOptions

    return EncoderOptions(
        weights=args.weights,
        pretrained=args.pretrained,
        layer=args.layer,
        pool=args.pool,
        size=args.size,
        resize=args.resize,
        crop=False if args.no_crop else None,
        mean=args.mean,
        std=args.std,
        interpolation=args.interpolation,
    )


def cmd_extract(args) -> int:
    if args.source and args.inputs:
        raise NenyaError("give either preproc files or --source, not both")
    if not args.source and not args.inputs:
        raise NenyaError("nothing to extract: give preproc .h5 files, or --source images:FOLDER / table:FILE")
    from nenya.engines import EngineOptions, choose_engine, engines
    from nenya.ranks import Ranks, launch

    ranks = Ranks.from_env()
    engine_name = choose_engine(args.engine, ranks, devices=args.devices)
    if args.devices is not None and args.devices > 1:  # this process only launches the ranks (no torch here)
        return launch(_without_devices(getattr(args, "argv", None) or sys.argv[1:]), args.devices)
    spec, opt = _model_spec(args)
    encoder = _load(spec, opt, args)
    output = _output(args, opt)
    builder = None
    if engine_name == "ray":
        from nenya.encoders import EncoderBuilder

        builder = EncoderBuilder(spec, opt=opt, options=_encoder_options(args), trust_checkpoint=args.trust_checkpoint)
    engine = engines.get(engine_name).from_options(
        EngineOptions(
            ranks=ranks if engine_name == "torchrun" else None,
            rank_timeout=args.rank_timeout,
            builder=builder,
            address=args.address,
            actors=args.actors,
            gpus_per_actor=args.gpus_per_actor,
            cpus_per_actor=args.cpus_per_actor,
        )
    )
    options = engine.prepare(
        encoder, _run_options(args, ranks if engine_name == "torchrun" else None), compile=args.compile
    )
    tiles = f", {encoder.grid[0]}x{encoder.grid[1]} tiles per image" if encoder.grid else ""
    print(
        f"{engine.label}model {encoder.name} ({encoder.dim}-d{tiles}) on {engine.describe(encoder)}, "
        f"{options.precision}",
        file=sys.stderr,
    )
    # the bf16 hint: said once (rank 0), and not for Ray, whose actors choose their own devices
    if args.precision is None and engine_name != "ray" and (ranks is None or ranks.is_main):
        _precision_hint(encoder.device)
    if args.source:
        return _report(
            engine.label,
            _extract_collection(args, encoder, output, options, engine),
            f"nothing new to encode: {output} already holds every image of {args.source} (--overwrite to redo)",
        )
    from nenya.extract import extract_preproc

    summary = extract_preproc(
        args.inputs,
        encoder,
        output,
        fmt=args.format or "h5",
        partitions=[p for p in args.partitions.split(",") if p],
        clobber=args.clobber,
        debug=args.debug,
        options=options,
        engine=engine,
    )
    return _report(engine.label, summary, f"nothing to do: every output already exists in {output} (--clobber to redo)")


#: what ``--precision auto`` buys on a CPU with native bf16. Measured on a 2-core AMD EPYC with
#: AVX512-BF16, bf16/fp32 encoding speed: torchvision ResNet-18 1.75x at 64 px, 1.8-1.96x at 224 px
#: (1 and 2 threads), ResNet-50 3.0x at 224 px (1 thread); training 1.8-2.5x (docs/training.md);
#: vectors 0.3-0.6% apart relative to their norm, cosine over 0.99998
BF16_HINT = (
    "hint: this CPU computes bf16 natively; --precision auto (bf16 here) would extract about 2x faster "
    "(1.7-3x measured on ResNets), with vectors equal to fp32's to about 1e-2 relative, not bit-identical"
)


def _precision_hint(device) -> None:
    """One line on stderr when an extraction runs fp32 by default on a CPU that computes bf16 natively."""
    from nenya.device import cpu_has_native_bf16

    if device.type == "cpu" and cpu_has_native_bf16():
        print(BF16_HINT, file=sys.stderr)


def _model_spec(args):
    """The model spec and the Nenya options (``--opts``, resolved once) of a command line."""
    from nenya.encoders.named import find_weights, resolve_opts

    opt = resolve_opts(args.opts) if args.opts else None
    if args.model:
        return args.model, opt
    if opt is not None:
        return f"supcon:{find_weights(opt)}", opt
    raise NenyaError("say which model to use: --model SPEC (see `nenya models`) or --opts opts.json")


def _load(spec: str, opt, args):
    from nenya.encoders import load_encoder

    return load_encoder(spec, opt=opt, trust_checkpoint=args.trust_checkpoint, options=_encoder_options(args))


def _output(args, opt) -> str:
    from nenya.encoders.named import latents_dir

    output = args.output or (latents_dir(opt) if opt is not None and not args.source else None)
    if output is None:
        raise NenyaError(
            "say where to write: --output PATH" + ("" if args.source else " (or give --opts with s3_outdir)")
        )
    return output


def _run_options(args, ranks):
    from nenya.engines.runner import RunOptions, default_workers

    workers = args.workers
    if workers is None:
        workers = default_workers(images=bool(args.source))
        if ranks is not None and workers:  # ranks on one machine share its cores
            workers = max(1, workers // ranks.local_world)
    return RunOptions(
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        num_workers=workers,
        device=args.device,
        precision=args.precision or "fp32",
        progress=not args.no_progress,
        max_skip_fraction=args.max_skip_fraction,
    )


def _source_options(args):
    """How the sources of ``--source`` read, from the command line (the job adds the encoder's
    transform and the ids the output already holds)."""
    from nenya.sources import GridOptions, RecordOptions, SourceOptions

    return SourceOptions(
        path_column=args.path_column,
        id_column=args.id_column,
        columns=args.columns,
        max_pixels=args.max_pixels,
        jpeg_on_device=args.decode == "gpu",
        records=RecordOptions(feature=args.feature, shape=args.shape, id_feature=args.id_feature),
        grid=GridOptions(args.var, args.sample_dim, args.tile, args.stride, args.max_nan_fraction),
        split=args.split,
        image_column=args.image_column,
    )


def _extract_collection(args, encoder, output, options, engine):
    from nenya.extract import extract_collection

    return extract_collection(
        args.source,
        encoder,
        output,
        fmt=args.format,
        overwrite=args.clobber,
        dtype=args.dtype,
        options=options,
        source_options=_source_options(args),
        engine=engine,
    )


def _report(label: str, summary, nothing: str) -> int:
    if summary.shards == 0:
        print(nothing)
        return 0
    for out in summary.outputs:
        print(out)
    print(label + summary.line())
    return 0


def _without_devices(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--devices":
            skip = True
        elif not a.startswith("--devices="):
            out.append(a)
    return out
