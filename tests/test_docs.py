"""What the README and the reference name exists: every ``msifusion.…`` they cite, every name their Python imports, and
every file of the README's layout. A renamed module or function must not leave the docs pointing at nothing."""

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "reference.md"]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _exists(dotted: str) -> bool:
    """Whether ``msifusion.a.b.c`` is a module, or an attribute of the longest module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            if not hasattr(found, name):
                return False
            found = getattr(found, name)
        return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_msifusion_name_the_docs_cite_exists(doc):
    text = doc.read_text(encoding="utf-8")
    cited = set(re.findall(r"`(msifusion(?:\.[A-Za-z_][A-Za-z0-9_]*)+)", text))
    for block in _python_blocks(text):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "msifusion":
                cited |= {f"{node.module}.{alias.name}" for alias in node.names}
    assert {"msifusion.InputError", "msifusion.workflows.fusion"} <= cited  # the search finds what is there
    assert [name for name in sorted(cited) if not _exists(name)] == []


def test_every_file_of_the_readmes_layout_exists():
    """Each ``folder/module.py`` (or a bare ``module.py`` in a folder's line, as ``models/`` lists its networks) names
    a module, and every module is named."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("src/msifusion/")
    layout = text[start:text.index("\ntests/", start)]  # the package's lines, not the tests' and benchmarks' after
    named = set(re.findall(r"(?<![\w/.])((?:[a-z_]+/)?[a-z_0-9]+\.py)\b", layout))
    assert {"cli.py", "harmonic/setting.py", "workflows/fusion.py", "cnn3.py"} <= named
    package = ROOT / "src" / "msifusion"
    modules = {p.relative_to(package).as_posix() for p in package.rglob("*.py") if p.name != "__init__.py"}
    found, missing = set(), []
    for name in sorted(named):
        matches = [m for m in modules if m == name or ("/" not in name and m.endswith("/" + name))]
        (found.update(matches) if len(matches) == 1 else missing.append(name))
    assert missing == []
    assert sorted(modules - found - {"__main__.py"}) == []  # and every module is named
