"""The house's import rules, read from the source (every import, module level or inside functions):
arrows only run down, and the documented-API faces are never imported by the core."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "nenya"
# (nenya.params is the options type the core shares with Nenya, not a face; as in the before-stop check)
FACES = {"latents_extraction", "io", "analyze_image", "train_util", "nenya_umap"}
# what a package may not import: the foundation nothing above it; sources, encoders, sinks and
# preprocessing not the coordinators (engines, the job layer), the analyses or the command line
ABOVE = {"engines", "extract", "analysis", "cli", "train", "demo", *FACES}
FORBIDDEN = {
    "pipeline": ABOVE | {"sources", "encoders", "sinks", "preprocess", "models"},
    "sources": ABOVE,
    "encoders": ABOVE,
    "sinks": ABOVE,
    "preprocess": ABOVE,
    "models": ABOVE | {"sources", "encoders", "sinks", "preprocess"},
}


def _imports(path: Path, src: Path = SRC) -> list[tuple[int, str]]:
    """(line, imported nenya module) for every import in ``path``."""
    pkg = ".".join(path.relative_to(src.parent).with_suffix("").parts)
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("nenya")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = (
                    pkg.split(".")[: -node.level]
                    if path.name != "__init__.py"
                    else pkg.split(".")[: 1 - node.level or None]
                )
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("nenya"):
                out += [(node.lineno, f"{mod}.{a.name}" if mod == "nenya" else mod) for a in node.names]
    return out


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _violations(src: Path = SRC) -> list[str]:
    bad = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        home = rel.parts[0].removesuffix(".py")
        for line, mod in _imports(path, src):
            target = _top(mod)
            if target in FORBIDDEN.get(home, set()) and target != home:
                bad.append(f"{rel}:{line} imports {mod}")
            if target in FACES and home not in FACES | {"cli", "demo", "__init__"}:
                bad.append(f"{rel}:{line} imports the documented face {mod}")
    return bad


def test_arrows_only_run_down_and_the_core_never_imports_the_faces():
    bad = _violations()
    assert bad == [], "arrows running back up:\n" + "\n".join(bad)


def test_the_checker_sees_an_arrow_back_up(tmp_path):
    """The rule can fail: a foundation module importing a source (the runner where it used to live),
    inside a function or relatively, and a source importing a face, are all flagged."""
    root = tmp_path / "nenya"
    (root / "pipeline").mkdir(parents=True)
    (root / "sources").mkdir()
    (root / "pipeline" / "loop.py").write_text(
        "def f():\n    from nenya.sources import Source\n    from ..engines import x\n"
    )
    (root / "sources" / "s.py").write_text(
        "from nenya.latents_extraction import main\nfrom nenya.pipeline import items\n"
    )
    assert _violations(root) == [
        "pipeline/loop.py:2 imports nenya.sources",
        "pipeline/loop.py:3 imports nenya.engines",
        "sources/s.py:1 imports nenya.latents_extraction",
        "sources/s.py:1 imports the documented face nenya.latents_extraction",
    ]


def _module_level_imports(src: Path = SRC) -> dict[str, set[str]]:
    """module -> the nenya modules it imports when it is imported (top-level statements only: not
    inside functions, not under ``if TYPE_CHECKING``), each resolved to an existing module."""
    names = {".".join(p.relative_to(src.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in src.rglob("*.py")}  # fmt: skip
    graph: dict[str, set[str]] = {}
    for mod, path in names.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        body = [n for n in tree.body if not (isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test))]
        deps = set()
        for node in body:
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in names else node.module
                         for a in node.names}  # fmt: skip
        graph[mod] = {d for d in deps if d in names and d != mod}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    graph = _module_level_imports()
    assert len(graph) > 100 and _cycles(graph) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # it can fail


def test_rooms_stay_small():
    """No file in src/ over 600 lines, no class over 300, no function over 80 (one concern a room)."""
    big = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(SRC)
        if text.count("\n") > 600:
            big.append(f"{rel}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            limit = 80 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else 300
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                n = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if n > limit:
                    big.append(f"{rel}:{node.lineno} {node.name}: {n} lines (at most {limit})")
    assert big == [], "\n".join(big)
