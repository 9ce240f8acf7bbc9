"""Reporting shared by the benchmarks: machine line, markdown tables, RESULTS.md sections."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

import torch

import nenya

HERE = Path(__file__).resolve().parent
RESULTS_HEADER = "# nenya benchmark results (appended by bench/extract.py and bench/memory.py)\n"


def machine_line() -> str:
    """CPU model, cores, memory, torch version and threads, in one line."""
    cpu, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not cpu and line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif not flags and line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    isa = [
        name
        for flag, name in (
            ("avx2", "AVX2"),
            ("avx512f", "AVX-512"),
            ("avx512_bf16", "AVX512-BF16"),
            ("amx_bf16", "AMX-BF16"),
        )
        if flag in flags
    ]
    return (
        f"{cpu} ({', '.join(isa) or 'ISA unknown'}), {os.cpu_count()} logical cores ({usable} usable){mem}; "
        f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"nenya {nenya.__version__}, device cpu"
    )


def append_results(path: Path, title: str, lines: list[str]) -> None:
    """Append a dated section to RESULTS.md (created with a one-line header if absent)."""
    new = not path.exists()
    with open(path, "a") as f:
        if new:
            f.write(RESULTS_HEADER)
        stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        f.write(f"\n## {title}, {stamp}\n\n")
        f.write(f"Machine: {machine_line()}\n\n")
        f.write(f"Command: `python {' '.join([os.path.relpath(sys.argv[0], HERE.parent)] + sys.argv[1:])}`\n\n")
        f.write("\n".join(lines).rstrip() + "\n")


def load_average() -> str:
    """The 1/5/15-minute load averages, for the note under a table (benches share machines)."""
    try:
        return ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def add_save_args(ap, default: Path) -> None:
    """``--results FILE`` and ``--no-save``: where a bench appends its section."""
    ap.add_argument("--results", default=str(default), help="markdown file to append to (default bench/RESULTS.md)")
    ap.add_argument("--no-save", action="store_true", help="print only; do not append to the results file")


def report(args, title: str, lines: list[str]) -> None:
    """Print a bench's section and append it to ``args.results`` unless ``--no-save``."""
    print()
    print("\n".join(lines))
    if not args.no_save:
        append_results(Path(args.results), title, lines)
        print(f"\nappended to {args.results}")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"

    return [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in rows]


def tiny_encoder(fingerprint: str):
    """A seeded strided conv (3 -> 8 channels, stride 4) pooled to 16 numbers, on the CPU: compute is
    cheap, so a bench with it measures the source, the runner and the sink."""
    from torch import nn

    from nenya.encoders.base import Encoder, Preprocess

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 16)
    )
    enc = Encoder(
        model, name="tiny", dim=16, preprocess=Preprocess(in_channels=3, demean=True), fingerprint=fingerprint
    )
    return enc.to("cpu", "fp32")
