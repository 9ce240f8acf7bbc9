"""``nenya serve``: the explorer over a whole collection as a local web app, with query by image."""

from __future__ import annotations

import argparse
import os
import re
import sys

from nenya.cli._latents import HELP_FORMAT, JOIN_HELP, LATENTS_HELP, partitions


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``nenya serve`` to the ``nenya`` parser."""
    p = sub.add_parser(
        "serve",
        help="serve an interactive explorer of a whole collection (local web app, query by image)",
        description="Linked projection and map views over every point (a viewport sample over a density "
        "image), filters, selections and CSV exports computed on the server, thumbnails on demand, and "
        "query by image: upload a cutout (.npy) or photo, or give an id, to see its nearest neighbours "
        "and where it lands. Binds 127.0.0.1 unless --host says otherwise; Ctrl-C stops it.",
        formatter_class=HELP_FORMAT,
    )
    p.add_argument("latents", help=LATENTS_HELP)
    p.add_argument("--coords", help="a table with id and U0/U1 (from `nenya umap`) or PC0/PC1; default: fit UMAP")
    p.add_argument("--images", help="preproc HDF5 file of the cutouts (thumbnails; rows matched by partition/row)")
    p.add_argument("--image-root", help="folder that relative paths in the 'path' column are relative to")
    p.add_argument("--index", help="a `nenya index` output (X.faiss) of these latents; default: exact, built at start")
    p.add_argument("--umap-model", help="a UMAP pickled by nenya (in the UMAP dir): queries placed by its transform")
    p.add_argument("--metric", default="l2", choices=["l2", "ip", "cosine"], help="metric of the index built here")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (anything but loopback is warned about)")
    p.add_argument("--port", type=int, default=5006, help="port (0: any free one)")
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="another name the page is opened under (with --host: this machine's name), repeatable",
    )
    p.add_argument(
        "--token",
        default=None,
        help="the token every request needs (default: $NENYA_SERVE_TOKEN, else a random one per start); "
        "the printed URL carries it, and the page keeps it in a cookie",
    )
    p.add_argument(
        "--no-token",
        action="store_true",
        help="no token (loopback only): anyone on this machine can then browse, export and upload",
    )
    p.add_argument("-k", type=int, default=10, help="neighbours listed for a point or a query")
    p.add_argument("--points", type=int, default=20_000, help="most points drawn per view (a density image beneath)")
    p.add_argument("--max-upload-mb", type=float, default=16.0, help="largest query upload accepted")
    p.add_argument("--color", help="column coloured at first")
    p.add_argument("--join", action="append", default=[], metavar="TABLE", help=JOIN_HELP)
    p.add_argument("--lat", help="latitude column of the map view (default: lat or latitude)")
    p.add_argument("--lon", help="longitude column of the map view (default: lon or longitude)")
    p.add_argument("--partitions", default=None, help="HDF5 partitions to read, comma-separated")
    p.add_argument("--ntrain", type=int, default=50_000, help="UMAP sample when there is no --coords")
    p.add_argument("--model", help="encode queries with this model instead of the one the latents record")
    p.add_argument("--opts", help="opts JSON of --model (SupCon models)")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow arbitrary pickled objects (trusted files)")
    p.add_argument("--title", default=None, help="page title (default: nenya serve: <latents>)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C; print the URL once listening."""
    from nenya.analysis.serve import ServeOptions, ServeState, open_collection, query_encoder_for, run_server

    if args.port < 0 or args.port > 65535:
        raise ValueError(f"--port must be 0..65535; got {args.port}")
    if args.max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb must be positive; got {args.max_upload_mb}")
    token = _token(args)
    from nenya.pipeline.storage import redact

    shown = redact(args.latents)  # a URL's password never reaches the page or the terminal
    print(f"reading {shown} ...", file=sys.stderr, flush=True)
    collection = open_collection(
        args.latents,
        coords=args.coords,
        images=args.images,
        image_root=args.image_root,
        index=args.index,
        umap_model=args.umap_model,
        metric=args.metric,
        lat=args.lat,
        lon=args.lon,
        partitions=partitions(args),
        ntrain=args.ntrain,
        join=args.join,
    )
    encoder, reason = query_encoder_for(
        collection, model=args.model, opts=args.opts, trust_checkpoint=args.trust_checkpoint
    )
    options = ServeOptions(
        k=args.k,
        points=args.points,
        max_upload=int(args.max_upload_mb * 1024 * 1024),
        title=args.title or f"nenya serve: {shown}",
        colour=args.color,
        source=shown,
    )
    state = ServeState(collection, options, encoder=encoder, no_query_reason=reason)

    def ready(url: str) -> None:
        print(f"serving {collection.n:,} points at {url} (Ctrl-C stops)", flush=True)

    clean = run_server(
        state, host=args.host, port=args.port, origins=tuple(args.allow_origin), ready=ready, token=token
    )
    print("stopped", file=sys.stderr, flush=True)
    if clean is False:  # a worker still busy (a model loading, a large export): its work is not ours to wait for
        sys.stdout.flush()
        os._exit(0)
    return 0


def _token(args: argparse.Namespace) -> str | None:
    """The server's token: --token, $NENYA_SERVE_TOKEN (kept out of the process list), or a new one;
    None with --no-token, which is refused off loopback."""
    from nenya.analysis.serve import is_loopback
    from nenya.analysis.serve.access import ENV, new_token

    if args.no_token:
        if args.token:
            raise ValueError("--token and --no-token contradict each other: give one")
        if not is_loopback(args.host):
            raise ValueError(
                f"--no-token is refused with --host {args.host}: anyone who reaches it could read the collection"
            )
        print(
            "warning: --no-token: anyone on this machine (other users of a shared node, any local program) "
            "can browse, export and upload",
            file=sys.stderr,
        )
        return None
    token = args.token or os.environ.get(ENV) or new_token()
    if not re.fullmatch(r"[A-Za-z0-9._~-]{16,256}", token):
        raise ValueError("a token is 16 to 256 of the characters A-Z a-z 0-9 . _ ~ - (--token or $NENYA_SERVE_TOKEN)")
    return token
