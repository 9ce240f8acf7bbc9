"""The ``nenya`` command: one sub-command per job."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

from nenya import __version__
from nenya._errors import NenyaError

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


def _add_extract(sub) -> None:
    p = sub.add_parser(
        "extract", help="latent vectors of Nenya preproc HDF5 files, image folders or path tables",
        description="Encode every cutout of each preproc file (local or URL) and write one latents file per "
                    "input (Nenya's _latents.h5 layout, Parquet or npy); or encode an image folder / path table "
                    "(--source) into one Parquet or npy output. Finished outputs are skipped (image collections: "
                    "only new ids are added), and an interrupted run resumes where it stopped when given the "
                    "same command.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="*", help="preproc .h5 files, globs or URLs (s3://...)")
    p.add_argument("--source", help="an image collection instead of preproc files: images:FOLDER or "
                                    "table:FILE.csv|FILE.parquet (local or URL)")
    p.add_argument("--model", help="model spec: supcon:PATH, nenya:v5, timm:NAME, torchvision:NAME, torchscript:FILE, "
                                   "ae:PATH, or a checkpoint path (default: the model of --opts, as Nenya's prep())")
    p.add_argument("--opts", help="Nenya opts JSON (model options for a checkpoint without them)")
    p.add_argument("--output", "-o", help="output folder or URL for preproc files (default: <s3_outdir>/"
                                          "<latents_folder> of --opts); output file (.parquet or .npy) for --source")
    p.add_argument("--format", choices=["h5", "parquet", "npy"], default=None,
                   help="output format (default: h5 for preproc files; from the output's extension for --source)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="vector type in Parquet/npy")
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
    g.add_argument("--interpolation", choices=["bilinear", "bicubic", "nearest", "lanczos"])
    g.add_argument("--decode", choices=["cpu", "gpu"], default="cpu",
                   help="where JPEGs are decoded: cpu (reader processes, default) or gpu (nvjpeg on the encoder's "
                        "CUDA device, resized there; other formats stay on the CPU; falls back to cpu with a warning)")
    g.add_argument("--max-pixels", type=int, help="skip images with more pixels than this (decompression bombs; "
                   "default 89,478,485 as Pillow)")
    t = p.add_argument_group("path tables (--source table:FILE)")
    t.add_argument("--path-column", default="path", help="column of image paths (absolute, relative to the table, URLs)")
    t.add_argument("--id-column", help="column of ids (default: the path)")
    t.add_argument("--columns", type=lambda s: [c for c in s.split(",") if c], help="metadata columns to carry "
                   "(default: all)")
    p.add_argument("--partitions", default="train,valid", help="comma-separated partitions to extract, where present")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=None, help="reader processes (default: 1 when there are 2+ cores)")
    p.add_argument("--shard-size", type=int, default=4096, help="items per unit of commit and resume")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "auto"],
                   help="auto: bf16 on GPUs and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (falls back to eager on failure)")
    p.add_argument("--clobber", "--overwrite", action="store_true", dest="clobber",
                   help="redo files whose output exists, discarding unfinished work of another configuration")
    p.add_argument("--debug", action="store_true", help="a few batches per partition only, into *_latents_debug.*")
    p.add_argument("--max-skip-fraction", type=float, default=None, help="fail when more than this fraction is skipped")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow arbitrary pickled objects in the checkpoint (only for files you trust: this can run code)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    e = p.add_argument_group("engines: where shards run (docs/scaling.md)")
    e.add_argument("--engine", choices=["auto", "local", "torchrun", "ray"], default="auto",
                   help="auto: torchrun ranks when RANK/WORLD_SIZE are set (torchrun, --devices), else this process")
    e.add_argument("--devices", type=int, default=None, metavar="N",
                   help="run N local ranks (one per GPU: cuda:0..N-1; on CPU the cores are split between them)")
    e.add_argument("--rank-timeout", type=float, default=1800.0, metavar="S",
                   help="rank 0 gives up when no shard was committed for S seconds while waiting for the others")
    e.add_argument("--address", default=None, help="Ray cluster to join: auto, ray://HOST:10001 or HOST:PORT "
                   "(default: start a local one)")
    e.add_argument("--actors", type=int, default=None, metavar="K",
                   help="Ray encoder actors (default: as many as the cluster's GPUs / CPUs allow)")
    e.add_argument("--gpus-per-actor", type=float, default=None, metavar="G",
                   help="GPUs per Ray actor (default 1 when the cluster has GPUs, else 0)")
    e.add_argument("--cpus-per-actor", type=float, default=1.0, metavar="C", help="CPUs per Ray actor")
    p.set_defaults(func=cmd_extract)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _encoder_options(args):
    from nenya.encoders.base import EncoderOptions

    return EncoderOptions(weights=args.weights, pretrained=args.pretrained, layer=args.layer, pool=args.pool,
                          size=args.size, resize=args.resize, crop=False if args.no_crop else None,
                          mean=args.mean, std=args.std, interpolation=args.interpolation)


def cmd_extract(args) -> int:
    if args.source and args.inputs:
        raise NenyaError("give either preproc files or --source, not both")
    if not args.source and not args.inputs:
        raise NenyaError("nothing to extract: give preproc .h5 files, or --source images:FOLDER / table:FILE")
    engine_name, ranks = _engine(args)
    if args.devices is not None and args.devices > 1:  # this process only launches the ranks (no torch here)
        from nenya.engines._ranks import launch

        return launch(_without_devices(getattr(args, "argv", None) or sys.argv[1:]), args.devices)
    from nenya.encoders import load_encoder
    from nenya.extract import extract_collection, extract_preproc
    from nenya.latents_extraction import _opt, latents_dir, prep
    from nenya.pipeline.runner import RunOptions, default_workers

    opt = _opt(args.opts) if args.opts else None
    if args.model:
        spec = args.model
    elif opt is not None:
        model_file, _ = prep(opt)
        spec = f"supcon:{model_file}"
    else:
        raise NenyaError("say which model to use: --model SPEC (see `nenya models`) or --opts opts.json")
    encoder = load_encoder(spec, opt=opt, trust_checkpoint=args.trust_checkpoint, options=_encoder_options(args))
    output = args.output or (latents_dir(opt) if opt is not None and not args.source else None)
    if output is None:
        raise NenyaError("say where to write: --output PATH" + ("" if args.source else
                                                                " (or give --opts with s3_outdir)"))
    workers = args.workers
    if workers is None:
        workers = default_workers(images=bool(args.source))
        if ranks is not None and workers:  # ranks on one machine share its cores
            workers = max(1, workers // ranks.local_world)
    device, engine, where = args.device, None, ""
    if ranks is not None:
        import torch

        from nenya.engines.torchrun import RankEngine

        device = ranks.device(args.device)
        if not device.startswith("cuda"):
            torch.set_num_threads(ranks.cpu_threads())
        engine, where = RankEngine(ranks, timeout=args.rank_timeout), f"rank {ranks.rank} of {ranks.world}: "
    options = RunOptions(batch_size=args.batch_size, shard_size=args.shard_size, num_workers=workers,
                         device=device, precision=args.precision, progress=not args.no_progress,
                         max_skip_fraction=args.max_skip_fraction,
                         description=f"rank {ranks.rank}" if ranks is not None else "extract")
    if engine_name == "ray":
        from nenya.engines.ray import EncoderBuilder, RayEngine

        builder = EncoderBuilder(spec, opt=opt, options=_encoder_options(args), trust_checkpoint=args.trust_checkpoint)
        engine = RayEngine(builder, address=args.address, actors=args.actors, gpus_per_actor=args.gpus_per_actor,
                           cpus_per_actor=args.cpus_per_actor)
        encoder.to("cpu", options.precision)  # here only for its dimension, grid and fingerprint
        where = "ray: "
    else:
        encoder.to(options.device, options.precision, compile=args.compile)
    tiles = f", {encoder.grid[0]}x{encoder.grid[1]} tiles per image" if encoder.grid else ""
    on = "Ray actors" if engine_name == "ray" else encoder.device
    print(f"{where}model {encoder.name} ({encoder.dim}-d{tiles}) on {on}, {options.precision}", file=sys.stderr)
    if args.source:
        summary = extract_collection(args.source, encoder, output, fmt=args.format, overwrite=args.clobber,
                                     dtype=args.dtype, options=options, path_column=args.path_column,
                                     id_column=args.id_column, columns=args.columns, max_pixels=args.max_pixels,
                                     engine=engine, decode=args.decode)
        if summary.shards == 0:
            print(f"nothing new to encode: {output} already holds every image of {args.source} "
                  "(--overwrite to redo)")
            return 0
        for out in summary.outputs:
            print(out)
        print(where + summary.line())
        return 0
    summary = extract_preproc(args.inputs, encoder, output, fmt=args.format or "h5",
                              partitions=[p for p in args.partitions.split(",") if p], clobber=args.clobber,
                              debug=args.debug, options=options, engine=engine)
    if summary.shards == 0:
        print(f"nothing to do: every output already exists in {output} (--clobber to redo)")
        return 0
    for out in summary.outputs:
        print(out)
    print(where + summary.line())
    return 0


def _engine(args):
    """The engine name (``auto`` resolved) and this process's ranks (None outside torchrun/--devices)."""
    from nenya.engines._ranks import Ranks

    ranks = Ranks.from_env()
    name = args.engine
    if name == "auto":
        name = "torchrun" if ranks is not None and ranks.world > 1 else "local"
    if args.devices is not None:
        if args.devices < 1:
            raise NenyaError(f"--devices must be 1 or more, got {args.devices}")
        if ranks is not None and ranks.world > 1:
            raise NenyaError("--devices starts its own ranks: do not combine it with torchrun (RANK/WORLD_SIZE are set)")
        if name == "ray":
            raise NenyaError("--devices is for local ranks; with --engine ray use --actors and --gpus-per-actor")
        if args.devices > 1:
            return "torchrun", None
    if name == "torchrun":
        if ranks is None:
            raise NenyaError("--engine torchrun needs RANK and WORLD_SIZE in the environment: start it with "
                             "`torchrun --nproc-per-node N -m nenya extract ...`, or use --devices N")
        return name, ranks
    if name == "local" and ranks is not None and ranks.world > 1:
        raise NenyaError(f"WORLD_SIZE={ranks.world} is set but --engine local would make every rank encode "
                         "everything; use --engine auto (or torchrun)")
    return name, None


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


def cmd_demo(args) -> int:
    from nenya.demo_job import run_demo

    run_demo(args.folder, n=args.n, model=args.model, train_seconds=args.train_seconds)
    return 0


def cmd_models(args) -> int:
    from nenya.io import NAMED_MODELS, model_dir
    from nenya.pipeline.registry import encoders, sinks, sources

    print("Model specs (nenya extract --model SPEC):")
    for name in encoders.names():
        print(f"  {name + ':':13s} {encoders.help(name)}")
    print("  a bare checkpoint path (.pth, .pt, .safetensors) means supcon:PATH")
    print("  photo models take --weights FILE | --pretrained, --layer K, --pool avg|max|gem|none, --size ...")
    print(f"\nNamed Nenya models: {', '.join(NAMED_MODELS)}; weights are looked up under {model_dir()}")
    print("  (set NENYA_MODEL_DIR to the folder holding <model_root>/<model_name>/last.pth)")
    print("\nInputs: Nenya preproc .h5 files as arguments, or --source:")
    for name in sources.names():
        if name not in ("h5", "arrays"):
            print(f"  {name + ':':13s} {sources.help(name)}")
    print("\nOutputs (--format):")
    for name in sinks.names():
        print(f"  {name:13s} {sinks.help(name)}")
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors echo arguments: never with a password from a URL in them."""

    def error(self, message: str):
        from nenya.pipeline.storage import redact

        super().error(redact(message))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nenya", description="nenya: latent vectors from large image collections (Nenya SST cutouts and more).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"nenya {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_extract(sub)
    d = sub.add_parser("demo", help="sample SST data -> a briefly trained model -> latents -> UMAP, gallery, explorer",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("folder", nargs="?", default="nenya-demo", help="where to put everything")
    d.add_argument("--n", type=int, default=2000, help="number of synthetic cutouts")
    d.add_argument("--model", default="resnet18", choices=["resnet18", "resnet34", "resnet50", "resnet101"])
    d.add_argument("--train-seconds", type=float, default=100.0, help="how long to train the contrastive model")
    d.set_defaults(func=cmd_demo)
    m = sub.add_parser("models", help="list the kinds of model nenya can extract with")
    m.set_defaults(func=cmd_models)
    from nenya import cli_explore, cli_train

    cli_train.register(sub)
    cli_explore.register(sub)
    return parser


class _Redact(logging.Filter):
    """No secret (URL passwords, AWS keys from the environment) reaches the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        from nenya.pipeline.storage import redact

        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


def _sigterm(signum, frame):  # stop like Ctrl-C: after the current batch, committed shards kept
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what --devices relaunches per rank
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("nenya").setLevel(min(level, logging.INFO))
    for handler in logging.getLogger().handlers:
        handler.addFilter(_Redact())
    signal.signal(signal.SIGTERM, _sigterm)
    t = time.perf_counter()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"\ninterrupted after {time.perf_counter() - t:.0f} s; committed shards are kept: "
              "rerun the same command to resume", file=sys.stderr)
        return 130
    except (NenyaError, FileNotFoundError, ValueError, KeyError) as e:
        from nenya.pipeline.storage import redact

        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"nenya: error: {redact(str(msg))}", file=sys.stderr)
        return 2
    except Exception as e:  # unexpected: still no secret on the screen
        import traceback

        from nenya.pipeline.storage import redact

        if args.verbose >= 2:
            print(redact(traceback.format_exc()), file=sys.stderr)
        print(f"nenya: error: {redact(f'{type(e).__name__}: {e}')} (rerun with -vv for the traceback)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
