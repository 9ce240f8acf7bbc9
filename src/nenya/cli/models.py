"""``nenya models`` (what can be named) and ``nenya demo``."""

from __future__ import annotations

from nenya.cli._latents import HELP_FORMAT


def register(sub) -> None:
    """Add ``nenya demo`` and ``nenya models`` to the ``nenya`` parser."""
    d = sub.add_parser(
        "demo",
        help="sample SST data -> a briefly trained model -> latents -> UMAP, gallery, explorer",
        formatter_class=HELP_FORMAT,
    )
    d.add_argument("folder", nargs="?", default="nenya-demo", help="where to put everything")
    d.add_argument("--n", type=int, default=2000, help="number of synthetic cutouts")
    d.add_argument(
        "--model",
        default="resnet18",
        choices=["resnet18", "resnet34", "resnet50", "resnet101"],
        help="backbone of the demo's SupConResNet",
    )
    d.add_argument("--train-seconds", type=float, default=100.0, help="how long to train the contrastive model")
    d.set_defaults(func=cmd_demo)
    m = sub.add_parser("models", help="list the kinds of model nenya can extract with")
    m.set_defaults(func=cmd_models)


def cmd_demo(args) -> int:
    from nenya.demo import run_demo

    run_demo(args.folder, n=args.n, model=args.model, train_seconds=args.train_seconds)
    return 0


def cmd_models(args) -> int:
    from nenya.config import model_dir
    from nenya.encoders import encoders
    from nenya.encoders.named import NAMED_MODELS
    from nenya.engines import engines
    from nenya.sinks import sinks
    from nenya.sources import sources

    print("Model specs (nenya extract --model SPEC):")
    for name in encoders.names():
        print(f"  {name + ':':13s} {encoders.help(name)}")
    print("  a bare checkpoint path (.pth, .pt, .safetensors) means supcon:PATH")
    print("  photo models take --weights FILE | --pretrained, --layer K, --pool avg|max|gem|none, --size ...")
    print(f"\nNamed Nenya models: {', '.join(NAMED_MODELS)}; weights are looked up under {model_dir()}")
    print("  (set NENYA_MODEL_DIR to the folder holding <model_root>/<model_name>/last.pth)")
    print("\nInputs: Nenya preproc .h5 files as arguments, or --source:")
    for name in sources.names():
        if hasattr(sources.get(name), "from_spec"):  # the kinds --source can name
            print(f"  {name + ':':13s} {sources.help(name)}")
    print("\nOutputs (--format):")
    for name in sinks.names():
        print(f"  {name:13s} {sinks.help(name)}")
    print("\nEngines (--engine; auto picks torchrun under torchrun, else local):")
    for name in engines.names():
        print(f"  {name:13s} {engines.help(name)}")
    return 0
