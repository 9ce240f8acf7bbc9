"""Every option of every command says what it does and shows its default once: walks the whole
parser (``nenya.cli.build_parser()``, each sub-command and sub-sub-command)."""

from __future__ import annotations

import argparse
import re

import pytest

from nenya.cli import build_parser
from nenya.sources import sources


def _parsers(parser: argparse.ArgumentParser, path: str = "nenya"):
    """(command path, parser) of the parser and every sub-parser below it (aliases once)."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield from _parsers(sub, f"{path} {name}")


def _options():
    """(command path, option name, help as the user reads it) of every option and argument."""
    out = []
    for path, parser in _parsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
                continue
            name = "/".join(action.option_strings) or action.dest
            out.append((path, name, formatter._expand_help(action) if action.help else ""))
    return out


OPTIONS = _options()


def test_the_walk_sees_every_command():
    commands = {path for path, _, _ in OPTIONS}
    assert {"nenya extract", "nenya train overfit", "nenya plot neighbours", "nenya search", "nenya umap"} <= commands
    assert len(OPTIONS) > 200


def test_every_option_has_a_help_line():
    missing = [f"{path} {name}" for path, name, text in OPTIONS if not text.strip()]
    assert missing == [], "options without help:\n" + "\n".join(missing)


def test_no_help_says_default_none():
    bad = [f"{path} {name}: {text}" for path, name, text in OPTIONS if "(default: None)" in text]
    assert bad == [], "\n".join(bad)


def test_each_default_is_shown_once_and_as_typed():
    twice = [
        f"{path} {name}: {text}" for path, name, text in OPTIONS if len(re.findall(r"\bdefault\b", text, re.I)) > 1
    ]
    assert twice == [], "defaults said twice:\n" + "\n".join(twice)
    lists = [f"{path} {name}: {text}" for path, name, text in OPTIONS if re.search(r"default: [\[(]", text)]
    assert lists == [], "Python lists shown as defaults:\n" + "\n".join(lists)


def test_defaults_are_shown():
    helps = {(path, name): text for path, name, text in OPTIONS}
    assert helps[("nenya extract", "--batch-size")].endswith("(default: 128)")
    assert helps[("nenya train overfit", "--nlayers")].endswith("(default: 2,3,4)")
    assert helps[("nenya umap", "--min-dist")].endswith("(default: 0.1)")
    assert "(default: 8)" in helps[("nenya plot neighbours", "-k")]
    assert "default" not in helps[("nenya extract", "--compile")]  # a flag: off unless given


def test_source_help_names_every_kind_source_can_take():
    (text,) = [text for path, name, text in OPTIONS if (path, name) == ("nenya extract", "--source")]
    for kind in sources.names():
        if hasattr(sources.get(kind), "from_spec"):  # the kinds --source can name (as `nenya models` lists)
            assert f"{kind}:" in text, f"--source help does not name {kind}: ({text})"
        else:
            assert f"{kind}:" not in text, f"--source help names {kind}:, which --source cannot take ({text})"


@pytest.mark.parametrize("command", [["extract"], ["train", "overfit"], ["umap"]])
def test_help_prints(command, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args([*command, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "(default: None)" not in out and "usage: nenya" in out
