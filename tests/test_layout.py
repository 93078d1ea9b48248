"""The package's layout rules: which part may import which, no import cycles, small modules, and a
light ``import hpr``.

Layers, lowest first; a module may import its own layer and the ones below, never above:

0. ``errors``, ``_files``, ``_hub``, ``_extras``, ``_nn``, ``householder``: helpers and the geometry;
1. ``data``: records, datasets, raw formats, prompts;
2. ``lm``: models, the architecture table, hooks, KV helpers, capture;
3. ``editor``, ``editor_set``, ``stacked``, ``train``: the method itself;
4. ``methods``: the registry and the baselines;
5. ``evaluation``: scoring, metrics, statistics, the evaluation pipeline, lm-eval;
6. ``study``: the book's store, runner, tables, plots;
7. ``cli``. ``hpr/__init__.py`` resolves its public names lazily and is exempt.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "hpr"
LAYERS = {
    "errors": 0,
    "_files": 0,
    "_hub": 0,
    "_extras": 0,
    "_nn": 0,
    "householder": 0,
    "data": 1,
    "lm": 2,
    "editor": 3,
    "editor_set": 3,
    "stacked": 3,
    "train": 3,
    "methods": 4,
    "evaluation": 5,
    "study": 6,
    "cli": 7,
    "__main__": 7,
}
MAX_LINES = 420  # "no module over ~400 lines"


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module in the package."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def part(name: str) -> str:
    """``hpr.lm.capture`` -> ``lm``; ``hpr.editor_set`` -> ``editor_set``."""
    return name.split(".")[1] if name.count(".") >= 1 else "__init__"


def imports(path: Path, top_level_only: bool = False) -> list[str]:
    """The ``hpr`` modules ``path`` imports (absolute imports; the package uses no relative ones)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; the package imports absolutely"
            if node.module and (node.module == "hpr" or node.module.startswith("hpr.")):
                if node.module == "hpr":
                    out += [f"hpr.{a.name}" for a in node.names]
                else:  # ``from pkg import submodule`` depends on the submodule, not on ``pkg/__init__``
                    subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules()]
                    out += subs if len(subs) == len(node.names) else [node.module, *subs]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("hpr.")]
    return out


def test_every_module_sits_in_a_layer() -> None:
    unknown = sorted({part(n) for n in modules() if n != "hpr"} - set(LAYERS))
    assert not unknown, f"add these parts of hpr/ to LAYERS (and the docstring): {unknown}"


def test_imports_go_down_the_layers() -> None:
    bad = []
    for name, path in modules().items():
        if name == "hpr":
            continue
        mine = LAYERS[part(name)]
        for dep in imports(path):
            if dep == "hpr" or part(dep) == "__init__":
                if dep in ("hpr", "hpr.__version__"):
                    continue
            other = LAYERS.get(part(dep))
            if other is not None and other > mine:
                bad.append(f"{name} (layer {mine}) imports {dep} (layer {other})")
    assert not bad, "\n".join(bad)


def test_no_import_cycles() -> None:
    """Module-level imports form no cycle (lazy imports inside functions are allowed to point up)."""
    mods = modules()
    graph = {n: {d for d in imports(p, top_level_only=True) if d in mods and d != n} for n, p in mods.items()}
    state: dict[str, int] = {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d) :] + [n, d]))
            if d not in state:
                visit(d, [*stack, n])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [])


def test_modules_are_small() -> None:
    big = {n: len(p.read_text().splitlines()) for n, p in modules().items()}
    assert not {n: k for n, k in big.items() if k > MAX_LINES}, {n: k for n, k in big.items() if k > MAX_LINES}


@pytest.mark.parametrize("name", sorted(modules()))
def test_every_module_imports_alone(name: str) -> None:
    """Each module imports in a fresh interpreter (no hidden order dependence, no cycle at import)."""
    if name.endswith("__main__"):
        pytest.skip("runs the CLI")
    subprocess.run([sys.executable, "-c", f"import {name}"], check=True, capture_output=True, timeout=120)


def test_import_hpr_is_light_and_lists_the_workflow() -> None:
    code = (
        "import sys, hpr; heavy = [m for m in ('peft', 'lm_eval', 'papermill', 'matplotlib', 'sklearn') "
        "if m in sys.modules]; print(heavy); print(hpr.__all__)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.splitlines()
    assert out[0] == "[]"
    names = ast.literal_eval(out[1])
    for needed in (
        "load_model",
        "load_split",
        "train_from_model",
        "EditorSet",
        "fit_method",
        "load_method",
        "parse_method",
        "evaluate",
        "HPR",
    ):
        assert needed in names


def test_no_package_attribute_hides_a_submodule() -> None:
    """``from hpr.lm import capture`` must give the module: no package re-exports a name that is
    also one of its submodules."""
    import importlib

    for name, path in modules().items():
        if path.name != "__init__.py" or name == "hpr":
            continue
        pkg = importlib.import_module(name)
        subs = {
            n.rsplit(".", 1)[1] for n in modules() if n.startswith(name + ".") and n.count(".") == name.count(".") + 1
        }
        for sub in subs:
            attr = getattr(pkg, sub, None)
            assert attr is None or type(attr).__name__ == "module", f"{name}.{sub} is a {type(attr).__name__}"


def test_readme_library_table_names_every_module() -> None:
    """The README's table of the library lists every module by its short name, and no module that is gone."""
    import re

    readme = (PKG.parent / "README.md").read_text(encoding="utf-8")
    table = readme.split("| part | modules | job |", 1)[1].split("\n\n", 1)[0]
    listed = {n.rstrip("/") for row in table.splitlines()[2:] for n in re.findall(r"`([^`]+)`", row.split("|")[2])}
    have = {name.rsplit(".", 1)[-1] for name in modules()}
    have -= {"hpr", "__main__", "cli", "data", "lm", "methods", "evaluation", "study"}  # the package and the rows
    assert sorted(have - listed) == [], "add these modules to the README's library table"
    assert sorted(listed - have) == [], "the README's library table names modules that do not exist"
