"""The ``nenya`` command: one sub-command per job, one module per command group.

``extract`` (:mod:`.extract`), ``train``/``reconstruct`` (:mod:`.train`), ``umap``/``pca``/``cluster``
(:mod:`.embed`), ``index``/``search`` (:mod:`.search`), ``plot`` (:mod:`.plot`), ``explore``
(:mod:`.explore`), ``compare``/``duplicates`` (:mod:`.compare`), ``outliers``/``trends`` (:mod:`.science`), ``serve`` (:mod:`.serve`),
``demo``/``models`` (:mod:`.models`); what the commands over latents files share is in
:mod:`._latents`. This module only builds the parser, sets up logging and turns errors into
messages; only the CLI prints.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from nenya import __version__
from nenya._errors import NenyaError
from nenya.cli import compare, embed, explore, extract, models, plot, science, search, serve, train
from nenya.pipeline import interrupt

log = logging.getLogger("nenya")

EPILOG = extract.EPILOG


class _Parser(argparse.ArgumentParser):
    """Usage errors echo arguments: never with a password from a URL in them."""

    def error(self, message: str):
        from nenya.pipeline.storage import redact

        super().error(redact(message))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nenya",
        description="nenya: latent vectors from large image collections (Nenya SST cutouts and more).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nenya {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in (extract, models, train, embed, search, plot, explore, compare, science, serve):
        group.register(sub)
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
    interrupt.install()  # SIGTERM stops like Ctrl-C: after the current batch, committed shards kept
    t = time.perf_counter()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted after {time.perf_counter() - t:.0f} s; committed shards are kept: "
            "rerun the same command to resume",
            file=sys.stderr,
        )
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
        print(f"nenya: error: {redact(f'{type(e).__name__}: {e}')} (rerun with -vv for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
