"""The docs are tested: every ``nenya`` command line in README.md and docs/*.md names commands and flags
the CLI has (fast), and the README's commands run on small data laid out as the README assumes (slow).

The static check reads fenced shell blocks (backslash continuations joined, ``# comments`` stripped,
heredoc bodies and ``python -c`` code skipped; ``torchrun ... -m nenya``, ``python -m nenya`` and
``ray exec cluster.yaml '...'`` unwrapped), ``# nenya ...`` comments and YAML ``entrypoint:`` values in
other fenced blocks, indented code blocks, inline code spans that start with ``nenya ``, and the
examples in the CLI's own ``--help`` epilogs. Placeholders (``INPUTS...``, ``SPEC``, ``[options]``) are
fine: only command names and flags are checked, against ``nenya.cli.build_parser()`` itself.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from nenya.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console", "zsh"}


@dataclass(frozen=True)
class DocCommand:
    """One shell command of the docs: where it is, its words, and the code block it came from."""

    where: str  # file:line
    text: str  # the command as written (continuations joined, comment stripped)
    block: int  # index of the code block in its file (-1: inline code or a --help epilog)
    lang: str  # the block's language ("" for an indented block, "inline", "epilog")
    comment: str = ""  # the trailing # comment on the command's last line, if any
    section: str = ""  # the heading above it


# -- reading the docs --------------------------------------------------------------------------------


def _blocks(text: str) -> tuple[list[tuple[int, str, list[str], str]], list[tuple[int, str]]]:
    """The code blocks of a Markdown text, as (first line number, language, lines, heading above),
    and the prose lines outside them, as (line number, line). Fenced blocks are ```lang ... ```; an
    indented block is a run of lines indented by 4 or more spaces after a blank line, outside lists."""
    blocks: list[tuple[int, str, list[str], str]] = []
    prose: list[tuple[int, str]] = []
    lines = text.splitlines()
    heading = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        fence = re.match(r"^(\s*)```+\s*([\w+-]*)", line)
        if fence:
            start, lang, body = i + 2, fence.group(2).lower(), []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append((start, lang, body, heading))
            i += 1
            continue
        after_blank = i == 0 or not lines[i - 1].strip()
        if line.startswith("    ") and line.strip() and after_blank and not _in_list(lines, i):
            start, body = i + 1, []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                body.append(lines[i][4:])
                i += 1
            blocks.append((start, "", body, heading))
            continue
        prose.append((i + 1, line))
        i += 1
    return blocks, prose


def _in_list(lines: list[str], i: int) -> bool:
    """Whether line ``i`` continues a list item (then its indentation is not a code block)."""
    for j in range(i - 1, -1, -1):
        if lines[j].strip():
            return bool(re.match(r"^\s*([-*+]|\d+\.)\s", lines[j])) or lines[j].startswith("  ")
    return False


def _split_commands(text: str) -> list[tuple[int, str, str]]:
    """Shell text -> (line offset, command, trailing comment) per simple command: backslash-newline
    joined, ``#`` comments stripped, split at newlines, ``;``, ``&&``, ``||`` and `` | `` outside quotes
    and brackets (a synopsis's ``(--model SPEC | --opts FILE)`` stays one command), heredoc bodies
    dropped."""
    out: list[tuple[int, str, str]] = []
    cur: list[str] = []
    comment = ""
    quote = ""
    depth = 0
    line = start = 0
    heredoc: str | None = None
    i = 0

    def flush() -> None:
        nonlocal cur, comment, start
        cmd = "".join(cur).strip()
        if cmd:
            out.append((start, cmd, comment.strip()))
        cur, comment, start = [], "", line

    while i < len(text):
        c = text[i]
        if heredoc is not None:  # skip the body up to the delimiter line
            end = text.find("\n", i)
            end = len(text) if end < 0 else end
            if text[i:end].strip() == heredoc:
                heredoc = None
            line += 1
            i = end + 1
            start = line
            continue
        if quote:
            if c == quote:
                quote = ""
            elif c == "\\" and quote == '"' and i + 1 < len(text):
                cur.append(c)
                i += 1
                c = text[i]
            if c == "\n":
                line += 1
            cur.append(c)
            i += 1
            continue
        if c == "\\" and text[i + 1 : i + 2] == "\n":
            cur.append(" ")
            line += 1
            i += 2
            continue
        if c in "'\"":
            quote = c
        elif c == "#" and (not cur or cur[-1] in " \t"):
            end = text.find("\n", i)
            end = len(text) if end < 0 else end
            comment = text[i + 1 : end]
            i = end
            continue
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
        elif c == "\n":
            m = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", "".join(cur))
            heredoc = m.group(1) if m else None
            line += 1
            depth = 0
            flush()
            i += 1
            continue
        elif c == ";" or text.startswith(("&&", "||"), i) or (c == "|" and depth == 0 and cur and cur[-1] == " "):
            flush()
            i += 2 if text.startswith(("&&", "||"), i) else 1
            continue
        cur.append(c)
        i += 1
    flush()
    return out


def _words(cmd: str) -> list[str]:
    try:
        return shlex.split(cmd)
    except ValueError:  # an unbalanced quote in prose-like text: split on spaces
        return cmd.split()


def nenya_args(cmd: str) -> list[list[str]] | None:
    """The argument lists of the ``nenya`` invocations in one shell command (``nenya ...``,
    ``torchrun ... -m nenya ...``, ``python -m nenya ...``, ``ray exec CLUSTER 'nenya ...'``, env
    assignments in front); ``None`` when it runs no nenya command."""
    words = _words(cmd)
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words = words[1:]
    if not words:
        return None
    if words[0] == "nenya":
        return [words[1:]]
    if words[0] in ("torchrun", "python", "python3") and "-m" in words:
        k = words.index("-m")
        if words[k + 1 : k + 2] == ["nenya"]:
            return [words[k + 2 :]]
    if words[:2] == ["ray", "exec"] and len(words) >= 4:
        found = [a for _, inner, _ in _split_commands(words[3]) for a in nenya_args(inner) or []]
        return found or None
    return None


def _yaml_values(body: list[str]) -> str:
    """The ``entrypoint:`` values of a YAML block (folded scalars joined), one per line."""
    out = []
    for k, line in enumerate(body):
        m = re.match(r"^(\s*)entrypoint:\s*(.*)$", line)
        if not m:
            continue
        value = m.group(2)
        if value.startswith((">", "|")):
            indent, parts = len(m.group(1)), []
            for nxt in body[k + 1 :]:
                if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                    break
                parts.append(nxt.strip())
            value = " ".join(p for p in parts if p)
        out.append(value)
    return "\n".join(out)


def _inline_spans(prose: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Inline code spans (they may run over a line break) that start with ``nenya <command>``."""
    text = "\n".join(line for _, line in prose)
    numbers = [n for n, _ in prose]
    spans = []
    for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        span = " ".join(m.group(1).split())
        if re.match(r"^(nenya|torchrun .*-m nenya) [a-z]", span):
            spans.append((numbers[text.count("\n", 0, m.start())], span))
    return spans


def doc_commands(path: Path) -> list[DocCommand]:
    """Every shell command in ``path``'s code blocks and its inline ``nenya ...`` spans."""
    rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
    blocks, prose = _blocks(path.read_text(encoding="utf-8"))
    out: list[DocCommand] = []
    for b, (first, lang, body, heading) in enumerate(blocks):
        if lang in SHELL_LANGS or lang == "":
            text = "\n".join(body)
        elif lang == "yaml":
            text = "\n".join(re.sub(r"^\s*#\s*", "", x) for x in body if x.lstrip().startswith("#"))
            text += "\n" + _yaml_values(body)
            first = 0  # folded values lose their line numbers: point at the block
        else:  # python, diff, js: a shell line shows only as a comment, ``# nenya extract ...``
            text = "\n".join(re.sub(r"^.*?#\s*(?=nenya )", "", x) if re.search(r"#\s*nenya ", x) else "" for x in body)
        for offset, cmd, comment in _split_commands(text):
            line = f"{rel}:{first + offset}" if first else f"{rel}:block {b + 1}"
            out.append(DocCommand(line, cmd, b, lang, comment, heading))
    for n, span in _inline_spans(prose):
        out.append(DocCommand(f"{rel}:{n}", span, -1, "inline"))  # (no section: prose)
    return out


def epilog_commands() -> list[DocCommand]:
    """The example lines of every ``nenya ... --help`` epilog (two spaces apart from their comment)."""
    out = []
    for name, parser in _parsers(build_parser()):
        for k, line in enumerate((parser.epilog or "").splitlines()):
            cmd = re.split(r"\s{2,}", line.strip())[0]
            if cmd.startswith(("nenya ", "torchrun ")):
                label = " ".join(w for w in ("nenya", name, "--help") if w)
                out.append(DocCommand(f"{label}: epilog line {k + 1}", cmd, -1, "epilog"))
    return out


# -- the parser --------------------------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _parsers(parser: argparse.ArgumentParser, name: str = "") -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(name.strip(), parser)]
    for sub, p in _subparsers(parser).items():
        out += _parsers(p, f"{name} {sub}")
    return out


def _flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def _flag_word(word: str) -> str | None:
    """The flag a word names (``--out=x`` -> ``--out``; ``[--output`` -> ``--output``), or None."""
    word = word.strip("([{").rstrip(")]},")
    if not word.startswith("-") or word in ("-", "--") or re.match(r"^-\d", word):
        return None
    return word.split("=", 1)[0]


def check_args(args: list[str], parser: argparse.ArgumentParser | None = None, name: str = "nenya") -> list[str]:
    """What is wrong with ``nenya ARGS`` for the real parser: unknown commands and flags (empty when
    all is well). A command word may list alternatives (``scatter|neighbours``: each is checked with
    the flags that follow); an upper-case or ``...`` word where a command belongs is a placeholder."""
    parser = parser or build_parser()
    problems: list[str] = []
    i = 0
    while i < len(args):
        word, subs = args[i], _subparsers(parser)
        flag = _flag_word(word)
        if flag is not None:
            if flag in ("-h", "--help"):
                return problems
            action = _flags(parser).get(flag)
            if action is None:
                problems.append(f"{name} has no flag {flag}")
            elif subs and action.nargs != 0 and "=" not in word:
                i += 1  # its value, before the sub-command
            i += 1
            continue
        if subs:
            if word.strip("[(").startswith("...") or word.isupper() or not re.match(r"^[a-z]", word):
                return problems  # a placeholder: nothing more can be checked
            names = [w for w in word.split("|") if w]
            missing = [w for w in names if w not in subs]
            if missing:
                return [*problems, f"{name} has no command {'|'.join(missing)} (it has {', '.join(sorted(subs))})"]
            for alt in names:
                problems += check_args(args[i + 1 :], subs[alt], f"{name} {alt}")
            return problems
        i += 1
    return problems


def all_doc_commands() -> list[DocCommand]:
    return [c for path in DOCS for c in doc_commands(path)] + epilog_commands()


def _nenya_commands() -> list[tuple[DocCommand, list[str]]]:
    return [(c, args) for c in all_doc_commands() for args in nenya_args(c.text) or []]


# -- the static check --------------------------------------------------------------------------------

#: docs/design.md's worked examples add a command and a flag: they name what does not exist yet
HYPOTHETICAL = {("docs/design.md", "nenya spread"), ("docs/design.md", "--min-size")}
#: flags of other programs that the prose names in code spans (pip, pytest, torchrun)
OTHER_TOOLS = {"-c", "-m", "--nproc-per-node", "--nproc_per_node"}
#: option tables: (file, the table's header line) -> the command whose flags its first column names
OPTION_TABLES = {
    ("docs/extraction.md", "| option | default | meaning |"): "extract",
    ("docs/training.md", "| option (JSON key / flag) | default | meaning |"): "train autoencoder",
}


def test_every_documented_command_names_real_commands_and_flags():
    found = _nenya_commands()
    assert len(found) > 100, f"only {len(found)} nenya command lines found: is the extraction broken?"
    files = {c.where.split(":")[0] for c, _ in found}
    assert {"README.md", "docs/extraction.md", "docs/training.md", "docs/explore.md"} <= files
    parser = build_parser()
    bad = [
        f"{c.where}: {p}\n    {c.text}"
        for c, args in found
        for p in check_args(args, parser)
        if (c.where.split(":")[0], c.text) not in HYPOTHETICAL
    ]
    assert not bad, "documented commands the CLI does not have:\n" + "\n".join(bad)


def test_every_flag_the_prose_names_is_a_flag_of_some_command():
    """A flag in a code span of the prose (``--snapshot-every N``) is one some nenya command has."""
    known = {flag for _, p in _parsers(build_parser()) for flag in _flags(p)}
    bad = []
    for path in DOCS:
        rel = path.relative_to(ROOT).as_posix()
        _, prose = _blocks(path.read_text(encoding="utf-8"))
        text = "\n".join(line for _, line in prose)
        for m in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
            for flag in re.findall(r"(?:^|[\s(\[|])(--?[a-zA-Z][\w-]*)", m.group(1)):
                if flag not in known | OTHER_TOOLS and (rel, flag) not in HYPOTHETICAL:
                    bad.append(f"{rel}: {flag} in `{m.group(1)}`")
    assert not bad, "flags no nenya command has:\n" + "\n".join(bad)


def test_option_tables_name_the_commands_flags():
    parser = build_parser()
    for (rel, header), command in OPTION_TABLES.items():
        lines = (ROOT / rel).read_text(encoding="utf-8").splitlines()
        assert header in lines, f"{rel}: no option table headed {header!r}"
        rows = []
        for line in lines[lines.index(header) + 2 :]:
            if not line.startswith("|"):
                break
            rows.append(line)
        flags = [f for row in rows for f in re.findall(r"`(--?[a-z][\w-]*)`", row.split("|")[1])]
        assert len(flags) >= 10, (rel, flags)
        bad = [p for f in flags for p in check_args([*command.split(), f], parser)]
        assert not bad, f"{rel}, the option table of nenya {command}:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("nenya extract data/*_preproc.h5 --model supcon:last.pth --no-such-flag -o out/", "no flag --no-such-flag"),
        ("nenya train contrastiv --opts opts.json", "nenya train has no command contrastiv"),
        ("nenya plot scatter|neighbors|galery x.parquet", "nenya plot has no command galery"),
        ("torchrun --nproc-per-node 2 -m nenya extract x.h5 --opt opts.json", "nenya extract has no flag --opt"),
        ("nenya -v umap x.h5 -q", "nenya umap has no flag -q"),
        ("ray exec c.yaml 'nenya extract s3://b/x.h5 --engine ray --gpus 1'", "no flag --gpus"),
    ],
)
def test_the_check_finds_a_missing_flag_or_command(line, problem):
    found = [p for _, cmd, _ in _split_commands(line) for args in nenya_args(cmd) or [] for p in check_args(args)]
    assert any(problem in p for p in found), found


def test_the_reader_joins_continuations_strips_comments_and_skips_heredocs():
    text = (
        "nenya extract a.h5 \\\n    --model supcon:x.pth -o out/   # a comment --not-a-flag\n"
        "cat > opts.json <<'EOF'\n{\"nenya --bogus\": 1}\nEOF\n"
        "python -c \"\nimport nenya\nprint('nenya umap --bogus')\"\n"
        "nenya index x.h5 && nenya search x.faiss --id valid/12 -k 10\n"
        "nenya extract INPUTS... (--model SPEC | --opts OPTS.json) [--output FOLDER] [options]\n"
    )
    cmds = _split_commands(text)
    args = [a for _, c, _ in cmds for a in nenya_args(c) or []]
    assert args[0] == ["extract", "a.h5", "--model", "supcon:x.pth", "-o", "out/"]
    assert cmds[0][2] == "a comment --not-a-flag"
    assert [a[0] for a in args] == ["extract", "index", "search", "extract"]
    assert not [p for a in args for p in check_args(a)]
    assert "--opts" in args[-1]  # the synopsis's alternatives stay one command


def test_a_bad_flag_is_found_wherever_a_page_puts_it(tmp_path):
    """A made-up page with a wrong flag in each place the check reads: every one is reported."""
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n"
        "```bash\nnenya umap x.h5 \\\n    --bad-fenced 1   # a comment\n```\n\n"
        "Then:\n\n    nenya index x.h5 --bad-indented\n\n"
        "Or `nenya search x.faiss\n--bad-inline` in prose.\n\n"
        "```python\nx = 1  # nenya pca x.h5 --bad-comment\n```\n\n"
        "```yaml\nspec:\n  entrypoint: >-\n    nenya extract x.h5\n    --bad-yaml 1\n```\n"
    )
    found = {p for c in doc_commands(page) for args in nenya_args(c.text) or [] for p in check_args(args)}
    assert found == {
        "nenya umap has no flag --bad-fenced",
        "nenya index has no flag --bad-indented",
        "nenya search has no flag --bad-inline",
        "nenya pca has no flag --bad-comment",
        "nenya extract has no flag --bad-yaml",
    }


# -- the README's layout -----------------------------------------------------------------------------

PHOTOS = 6  # photos/, images.csv, resnet/ and effnet/vectors.parquet, vectors.parquet
SHARDS = 100  # shards/00000.tar .. 00099.tar, as the README's brace pattern names them
TRAIN_OPTS = {  # a small Nenya opts file: 16x16 cutouts, one epoch of a few batches
    "ssl_method": "SimCLR",
    "ssl_model": "resnet18",
    "feat_dim": 16,
    "nchannels": 1,
    "batch_size_train": 16,
    "batch_size_valid": 16,
    "epochs": 1,
    "learning_rate": 0.02,
    "lr_decay_rate": 0.1,
    "weight_decay": 0.0001,
    "momentum": 0.9,
    "temp": 0.07,
    "cosine": True,
    "warm": False,
    "trial": 0,
    "random_cropjitter": [12, 2],
    "images_file": "data/MODIS_2012_preproc.h5",
    "model_root": "docs",
    "s3_outdir": ".",
}


def _radar(n: int, seed: int):
    """Radar-like fields of 90 x 96, as docs/training.md makes ``radar.npy``."""
    from nenya.sample_data import make_cutouts

    x, _ = make_cutouts(n, size=96, seed=seed)
    return x[:, :90, :]


def _vectors_table(path: Path, ids: list[str], dim: int, seed: int, **columns) -> None:
    """A Parquet of vectors (``id``, metadata columns, ``vector``) as image extraction writes them."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(len(ids), dim)).astype(np.float32)
    vectors[1] = vectors[0] + 1e-3  # one near-duplicate pair, across splits when a split is given
    table = pa.table({"id": ids, **columns})
    flat = pa.array(vectors.ravel(), pa.float32())
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.append_column("vector", pa.FixedSizeListArray.from_arrays(flat, dim)), path)


def build_layout(folder: Path) -> None:
    """Every input the README's commands read, small, in the layout they assume (``folder`` is their
    working directory)."""
    import json

    import h5py
    import numpy as np
    import xarray as xr

    from conftest import save_checkpoint
    from nenya.encoders.supcon import SupConEncoder
    from nenya.engines.runner import RunOptions
    from nenya.latents_extraction import extract_preproc
    from nenya.params import Params, option_preprocess
    from nenya.sample_data import make_cutouts, write_preproc
    from nenya.train.autoencoder import AutoencoderConfig, train_autoencoder
    from photokit import picture, save, write_tfrecord, write_wds

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    # preproc files: data/ (extraction, training), x_ (explore), 2012_/2020_ (compare)
    write_preproc(folder / "data" / "MODIS_2012_preproc.h5", n_valid=48, n_train=64, size=16, seed=0)
    write_preproc(folder / "x_preproc.h5", n_valid=64, n_train=16, size=16, seed=1)
    write_preproc(folder / "2012_preproc.h5", n_valid=48, size=16, seed=2)
    write_preproc(folder / "2020_preproc.h5", n_valid=48, size=16, seed=3)
    radar = _radar(40, 0)
    np.save(folder / "radar.npy", radar)
    with h5py.File(folder / "data" / "radar_preproc.h5", "w") as f:
        f.create_dataset("valid", data=_radar(12, 1)[:, None])
    # the SupCon model: models/last.pth, and where opts.json says training puts it
    (folder / "opts.json").write_text(json.dumps(TRAIN_OPTS, indent=1))
    opt = option_preprocess(Params(str(folder / "opts.json")))
    save_checkpoint(opt, folder / "models" / "last.pth")
    (folder / opt.model_folder).mkdir(parents=True)
    (folder / opt.model_folder / "last.pth").hardlink_to(folder / "models" / "last.pth")
    enc = SupConEncoder.from_checkpoint(str(folder / "models" / "last.pth"), opt).to("cpu")
    run = RunOptions(batch_size=64, num_workers=0, device="cpu", progress=False)
    for name in ("x", "2012", "2020"):
        extract_preproc([str(folder / f"{name}_preproc.h5")], enc, str(folder), options=run)
    # the autoencoder ae/last.pth, on radar.npy as the README's own training command makes it
    ae = AutoencoderConfig(
        data=str(folder / "radar.npy"), crop=[64, None], nlayers=2, poolsize=4, numfilters=2, num_dense=16,
        num_steps=2, num_checkpoints=1, output=str(folder / "ae"),
    )  # fmt: skip
    train_autoencoder(ae, device="cpu", progress=False)
    # photos (nested), hotels, a path table, WebDataset shards, HRRR-like TFRecords, a Zarr SST field
    ids = []
    for i in range(PHOTOS):
        rel = f"{'trip' if i % 2 else 'home'}/p{i}.jpg"
        save(picture(i), folder / "photos" / rel, "JPEG")
        ids.append(rel)
    for i in range(3):
        save(picture(100 + i, (72, 96)), folder / "hotels" / f"h{i}.jpg", "JPEG")
    rows = [f"img{i},photos/{rel}" for i, rel in enumerate(ids)]
    (folder / "images.csv").write_text("image_id,path\n" + "\n".join(rows) + "\n")
    (folder / "shards").mkdir()
    for s in range(SHARDS):
        import io

        buf = io.BytesIO()
        picture(200 + s).save(buf, "JPEG")
        write_wds(folder / "shards" / f"{s:05d}.tar", [(f"k{s}", {"jpg": buf.getvalue(), "json": {"s": s}})])
    # a Hugging Face dataset with a test split, written by the datasets library (save_to_disk)
    import datasets

    flowers = datasets.Dataset.from_dict({"image": [picture(300 + i) for i in range(4)], "label": [0, 1, 0, 1]})
    flowers = flowers.cast_column("image", datasets.Image())
    datasets.DatasetDict({"train": flowers, "test": flowers}).save_to_disk(str(folder / "flowers"))
    (folder / "hrrr").mkdir()
    fields = _radar(6, 2)
    for part in range(2):
        records = [
            {
                "ref": (fields[3 * part + k].ravel().tolist(), "float"),
                "size": ([90, 96], "int"),
                "time": (f"2021-06-0{3 * part + k + 1}T00".encode(), "byte"),
            }
            for k in range(3)
        ]
        write_tfrecord(folder / "hrrr" / f"part{part}.tfrecord", records)
    tiles, _ = make_cutouts(2 * 4, size=64, seed=1)
    sst = 290 + tiles.reshape(2, 2, 2, 64, 64).transpose(0, 1, 3, 2, 4).reshape(2, 128, 128)
    sst[:, :, :40] = np.nan  # land: the western tiles are skipped
    coords = {
        "time": np.datetime64("2012-06-01") + np.arange(2).astype("timedelta64[D]"),
        "lat": np.linspace(30, 35, 128),
        "lon": np.linspace(-75, -70, 128),
    }
    xr.Dataset({"sst": (("time", "lat", "lon"), sst)}, coords=coords).to_zarr(folder / "sst.zarr", consolidated=False)
    # vectors of one collection by two models, and a collection with a split column
    _vectors_table(folder / "resnet" / "vectors.parquet", ids, 32, 0)
    _vectors_table(folder / "effnet" / "vectors.parquet", ids, 24, 1)
    split = ["train" if i % 2 == 0 else "test" for i in range(PHOTOS)]
    _vectors_table(folder / "vectors.parquet", ids, 32, 2, split=split)


# -- running the README ------------------------------------------------------------------------------

QUICK_START = "Quick start"  # its two lines are what CI itself runs (install + demo, install + tests)
CANNOT_RUN = {  # what CI and this machine cannot give, by a word of the command
    "s3://": "needs an S3 bucket (URLs are tested against a local S3 server in the s3-marked tests)",
    "--engine ray": "needs a Ray cluster (the ray-marked tests start a local one)",
    "--devices": "needs several GPUs",
}
#: no model hub here: a --pretrained command runs with the same model's random weights (the same
#: sources, preprocessing, encoder and outputs; only the vectors' values differ)
OFFLINE = "--pretrained"
#: what a command's comment or the text beside it promises, checked after it ran: (a word of the
#: command, text its output holds or a file it made (``file:PATH``))
PROMISES = [
    ("--output latents/", "file:latents/MODIS_2012_latents.h5"),
    ("--output vectors.parquet", "file:vectors.parquet.status.csv"),
    ("--pool none", "file:tiles.parquet"),
    ("-o images.npy", "file:images.npy"),
    ("-o images.npy", "file:images.parquet"),
    ("wds:", "file:shards.parquet"),
    ("hf:", "file:flowers.parquet"),
    ("tfrecord:", "file:radar.parquet"),
    ("xarray:", "file:sst_tiles.parquet"),
    ("-o vectors.lance", "file:vectors.lance"),
    ("--snapshot-every 5", "file:models/docs/*/snapshot_epoch_000.png"),
    ("train autoencoder", "file:ae/last.pth"),
    ("train overfit", "overfit search: 12 settings"),
    ("train overfit", "smallest embedding reaching 0.1"),
    ("train overfit", "file:overfit.csv"),
    ("--opts opts.json -o latents/", "file:latents/MODIS_2012_latents.h5"),
    ("ae:ae/last.pth --format parquet", "file:latents/radar_latents.parquet"),
    ("umap x_latents.h5", "file:x_latents_umap.parquet"),
    ("plot gallery", "file:x_latents_umap_gallery.png"),
    ("nenya index", "file:x_latents.faiss"),
    ("nenya explore", "file:x_latents_explorer.html"),
]


#: inputs only one block reads, left out of the others' copies (the photo block writes its own
#: vectors.parquet; the explore block's comes from a table with a split column, as in docs/compare.md)
SECTION_ONLY = {"vectors.parquet": "Explore latents"}


def readme_commands() -> list[DocCommand]:
    """The shell commands of README.md's code blocks, the quick start left out."""
    return [c for c in doc_commands(ROOT / "README.md") if c.lang in SHELL_LANGS and c.section != QUICK_START]


def why_not(cmd: DocCommand) -> str | None:
    return next((reason for word, reason in CANNOT_RUN.items() if word in cmd.text), None)


def _runnable_blocks() -> list[tuple[str, list[DocCommand]]]:
    blocks: dict[str, list[DocCommand]] = {}
    for c in readme_commands():
        blocks.setdefault(c.section, [])
        if why_not(c) is None:
            blocks[c.section].append(c)
    return [(section, cmds) for section, cmds in blocks.items() if cmds]


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """The README's inputs, made once for the module."""
    folder = tmp_path_factory.mktemp("readme") / "layout"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NENYA_CACHE", str(folder.parent / "cache"))
        build_layout(folder)
    return folder


def _copy_layout(src: Path, dst: Path, section: str) -> None:
    """A fresh working copy for ``section``'s block; checkpoints hard-linked (nenya replaces files,
    never rewrites them)."""
    import os
    import shutil

    def copy(a, b):
        return os.link(a, b) if str(a).endswith(".pth") else shutil.copy2(a, b)

    def ignore(folder, names):
        return [n for n in names if Path(folder) == src and SECTION_ONLY.get(n, section) != section]

    shutil.copytree(src, dst, copy_function=copy, ignore=ignore)


def _run(cmd: DocCommand, cwd: Path, env: dict) -> str:
    """Run one README command as a user types it (bash: globs, ``&&``); its output. ``nenya serve``
    is started, waited for until it prints its URL, and stopped with Ctrl-C (SIGINT)."""
    import subprocess

    text = cmd.text.replace(f" {OFFLINE}", "")
    if text.startswith("nenya serve "):
        from servekit import start_server, stop_server

        served = start_server(shlex.split(text)[2:], cwd, timeout=180, env=env)
        rc, _, output = stop_server(served)
        assert rc == 0, f"{cmd.where}: {cmd.text}\nnenya serve exited {rc} after Ctrl-C:\n{output[-3000:]}"
        return output
    r = subprocess.run(["bash", "-c", text], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    output = r.stdout + r.stderr
    assert r.returncode == 0, f"{cmd.where}: {cmd.text}\nexited {r.returncode}:\n{output[-3000:]}"
    return output


@pytest.mark.slow
@pytest.mark.parametrize(("section", "cmds"), _runnable_blocks(), ids=[s for s, _ in _runnable_blocks()])
def test_the_readme_commands_run(section, cmds, layout, tmp_path):
    """Each README code block, run top to bottom in a fresh copy of the layout it assumes."""
    import glob
    import os
    import time

    cwd = tmp_path / "work"
    _copy_layout(layout, cwd, section)
    # two cores shared with other jobs: one OpenMP thread per process, which docs/training.md
    # recommends on a busy machine; it changes how fast a command runs, not what it does
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for cmd in cmds:
        t0 = time.perf_counter()
        output = _run(cmd, cwd, env)
        print(f"{time.perf_counter() - t0:6.1f} s  {cmd.where}  {cmd.text}")
        for word, promise in PROMISES:
            if word not in cmd.text:
                continue
            if promise.startswith("file:"):
                assert glob.glob(str(cwd / promise[5:])), f"{cmd.where}: {cmd.text}\nmade no {promise[5:]}:\n{output}"
            else:
                assert promise in output, f"{cmd.where}: {cmd.text}\nsays nothing like {promise!r}:\n{output}"


@pytest.mark.slow
@pytest.mark.parametrize("cmd", [c for c in readme_commands() if why_not(c)], ids=lambda c: c.where)
def test_the_readme_commands_this_machine_cannot_run(cmd):
    """Listed, with the reason, so that the run's summary shows them."""
    assert check_args(nenya_args(cmd.text)[0]) == []
    pytest.skip(f"{cmd.text}: {why_not(cmd)}")


def test_every_readme_command_is_run_or_skipped_with_a_reason():
    cmds = readme_commands()
    assert len(cmds) >= 20, [c.text for c in cmds]
    ran = [c for _, block in _runnable_blocks() for c in block]
    assert len(ran) + sum(why_not(c) is not None for c in cmds) == len(cmds)
    for word, _ in PROMISES:  # each promise belongs to a README command
        assert any(word in c.text for c in ran), word
