"""Every ``from msifusion… import name`` (and ``import msifusion.…``) in the package, its tests and the benchmark
scripts names something that exists, including imports inside functions that only a rare path runs (a benchmark
script, a CUDA branch): a renamed function must not leave one behind."""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted(p for folder in ("src/msifusion", "tests", "benchmarks") for p in (ROOT / folder).rglob("*.py"))


def _msifusion_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) of each name imported from an msifusion module in ``path``; ``import msifusion.a.b`` counts
    as (line, "msifusion.a", "b")."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = [(node.lineno, node.module, alias.name) for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
             and node.module.split(".")[0] == "msifusion" for alias in node.names]
    found += [(node.lineno, *alias.name.rsplit(".", 1)) for node in ast.walk(tree) if isinstance(node, ast.Import)
              for alias in node.names if alias.name.startswith("msifusion.")]
    return found


def test_the_files_are_found():
    names = {p.name for p in FILES}
    assert {"cli.py", "test_imports.py", "bench_speed.py"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_name_imported_from_msifusion_exists(path):
    missing = []
    for line, module, name in _msifusion_imports(path):
        found = importlib.import_module(module)
        if name != "*" and not hasattr(found, name):
            try:
                importlib.import_module(f"{module}.{name}")  # a submodule: `from msifusion.harmonic import kernels`
            except ModuleNotFoundError:
                missing.append(f"line {line}: {module}.{name}")
    assert not missing


def test_the_algorithms_never_import_the_workflows_or_the_cli():
    """The layering the package's layout promises (msifusion/workflows/__init__.py): the commands' workflows build on
    the algorithms, never the other way, so each algorithm module is usable and testable without them."""
    package = ROOT / "src" / "msifusion"
    upward = []
    for path in sorted(package.rglob("*.py")):
        inside = path.relative_to(package).parts
        if inside[0] in ("workflows", "cli.py", "__main__.py"):
            continue
        imported = [(line, f"{module}.{name}") for line, module, name in _msifusion_imports(path)]
        upward += [f"{'/'.join(inside)} line {line}: {what}" for line, what in imported  # `from msifusion import cli` too
                   if what.split(".")[:2] in (["msifusion", "workflows"], ["msifusion", "cli"])]
    assert not upward
