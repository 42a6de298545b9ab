"""The package's import graph: every module imports, no module imports itself back through
others, and ``import orthosae_plugin`` loads nothing beyond what it needs to register. And
its modules stay a readable size (one concept per file).

The graph is read from the sources with ``ast``: every ``import`` statement in a module,
including those inside functions (a lazy import closes a circle as surely as a top-level one,
only later) and under ``if TYPE_CHECKING:`` (a module that needs another's types depends on
it). ``from package import name`` is an edge to the submodule ``package.name`` when there is
one, else to ``package`` itself (its ``__init__``).
"""

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE = "orthosae_plugin"


def module_files() -> dict[str, Path]:
    """Every module of the package, by dotted name, from the source tree."""
    modules = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` imports (explicitly, or as the parent
    package of what it imports, unless that package is its own ancestor)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            targets.add(submodule if submodule in modules else base)
    edges = set()
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")))}
    for target in targets:
        if target not in modules:
            continue
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            step = ".".join(parts[:i])
            if step in modules and step != name and (step == target or step not in ancestors):
                edges.add(step)
    return edges


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def _describe(cycle: list[str], graph: dict[str, set[str]]) -> str:
    return "; ".join(f"{a} -> {', '.join(sorted(graph[a] & set(cycle)))}" for a in cycle)


def test_the_graph_reader_sees_a_circle_through_a_lazy_import(tmp_path):
    fake = {"p": tmp_path / "p" / "__init__.py", "p.a": tmp_path / "p" / "a.py", "p.b": tmp_path / "p" / "b.py",
            "p.c": tmp_path / "p" / "c.py"}
    fake["p"].parent.mkdir()
    fake["p"].write_text("")
    fake["p.a"].write_text("from p.b import thing\n")
    fake["p.b"].write_text("def f():\n    from p import a\n    return a\n")
    fake["p.c"].write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.a import x\n")
    graph = {name: imports_of(name, path, fake) for name, path in fake.items()}
    assert graph == {"p": set(), "p.a": {"p.b"}, "p.b": {"p.a"}, "p.c": {"p.a"}}
    assert find_cycles(graph) == [["p.a", "p.b"]]


def test_the_graph_reader_resolves_relative_imports_and_names_from_a_package(tmp_path):
    files = {"p": "from p.x import y\n", "p.x": "from . import z\nfrom .z import w\n", "p.z": "from p import thing\n"}
    fake = {}
    for name, text in files.items():
        path = tmp_path / name.replace(".", "/") / "__init__.py" if name == "p" else tmp_path / (name.replace(".", "/") + ".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        fake[name] = path
    graph = {name: imports_of(name, path, fake) for name, path in fake.items()}
    assert graph == {"p": {"p.x"}, "p.x": {"p.z"}, "p.z": {"p"}}
    assert find_cycles(graph) == [["p", "p.x", "p.z"]]


def test_no_module_of_the_package_is_part_of_an_import_circle():
    graph = import_graph()
    assert len(graph) > 20 and "orthosae_plugin.smollm2.model" in graph
    cycles = find_cycles(graph)
    assert cycles == [], "import circles: " + " | ".join(_describe(c, graph) for c in cycles)


# Lines a module of the package may have: one concept per file, readable top to bottom.
MAX_MODULE_LINES = 450


def test_no_module_of_the_package_is_over_the_size_bound():
    sizes = {name: len(path.read_text().splitlines()) for name, path in module_files().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# What `import orthosae_plugin` may add to what `import sae_lens` (which it needs) loads already:
# none of SAEBench, the model stack (transformers, TransformerLens, datasets) beyond SAELens's own,
# the offline readers of the [smollm2] extra, or the package's real-model and eval code.
NOT_ON_IMPORT = ("sae_bench", "transformers", "transformer_lens", "datasets", "gguf", "rdata", "pysword",
                 "orthosae_plugin.smollm2", "orthosae_plugin.evals")


@pytest.fixture(scope="module")
def fresh_interpreter():
    """One fresh interpreter (starting one costs seconds) measures, in this order, what
    ``import orthosae_plugin`` adds after ``import sae_lens``, then imports every module of
    the package and records each failure."""
    names = [name for name in module_files() if not name.endswith("__main__")]  # that one runs its command
    return json.loads(_run(
        "import importlib, json, sys, warnings\n"
        "import sae_lens\n"
        "before = set(sys.modules)\n"
        "import orthosae_plugin\n"
        "added = sorted(set(sys.modules) - before)\n"
        "warnings.simplefilter('ignore', FutureWarning)  # the moved modules' aliases say they moved\n"
        "failed = {}\n"
        f"for name in {names!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as error:\n"
        "        failed[name] = f'{type(error).__name__}: {error}'\n"
        "print(json.dumps({'added': added, 'failed': failed}))\n"
    ).splitlines()[-1])


def test_every_module_imports_in_a_fresh_interpreter(fresh_interpreter):
    assert fresh_interpreter["failed"] == {}


def test_importing_the_package_loads_only_what_registration_needs(fresh_interpreter):
    added = fresh_interpreter["added"]
    assert "orthosae_plugin.registration" in added  # the measurement sees the package's own modules
    unexpected = [m for m in added if any(m == p or m.startswith(p + ".") for p in NOT_ON_IMPORT)]
    assert unexpected == []


MOVED = [("orthosae_plugin.smollm", "orthosae_plugin.smollm2.model", "load_smollm2"),
         ("orthosae_plugin.smollm", "orthosae_plugin.smollm2.cache", "cache_dir"),
         ("orthosae_plugin.corpus", "orthosae_plugin.smollm2.corpus", "english_corpus"),
         ("orthosae_plugin.activations", "orthosae_plugin.smollm2.activations", "cached_activations"),
         ("orthosae_plugin.demo", "orthosae_plugin.smollm2.demo", "run_demo")]


@pytest.mark.parametrize(("old", "new", "name"), MOVED)
def test_a_moved_module_still_answers_at_its_old_path_and_says_where_it_went(old, new, name):
    sys.modules.pop(old, None)
    with pytest.warns(FutureWarning, match=f"{old} moved to orthosae_plugin.smollm2"):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)


def test_the_old_command_still_runs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "orthosae_plugin.smollm", "where"], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "ORTHOSAE_CACHE": str(tmp_path),
                                              "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(tmp_path)
    assert "python -m orthosae_plugin.smollm2 fetch" in result.stderr  # the warning names the new command
