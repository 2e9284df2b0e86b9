"""The installed package's requirements match its imports (a plain ``pip install`` works)."""

import ast
import importlib.metadata
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("flaudit", "auditor", "core", "defenses", "integrations", "scenarios")


def _imported_top_names() -> set[str]:
    """Top-level names of every absolute import in the installed source folders."""
    names = set()
    for room in ROOMS:
        for path in (ROOT / room).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"flaudit", "__future__"}


BENCH_ONLY_EXTRA = 'extra == "bench"'  # peers that benches/ times ours against; the package never imports them


def _requirements() -> set[str]:
    """Distribution names of install_requires and every extra but the benches' peers."""
    requirements = [Requirement(text) for text in importlib.metadata.requires("flaudit") or []]
    return {r.name.lower().replace("_", "-") for r in requirements if str(r.marker) != BENCH_ONLY_EXTRA}


def test_every_import_is_a_requirement_and_every_requirement_is_imported():
    distributions = importlib.metadata.packages_distributions()
    required = _requirements()
    imported = set()
    for name in _imported_top_names():
        dists = {d.lower().replace("_", "-") for d in distributions.get(name, [])}
        assert dists, f"{name!r} is imported but no installed distribution provides it"
        assert dists & required, f"{name!r} (from {sorted(dists)}) is imported but not in setup.py's requirements"
        imported |= dists & required
    assert required - imported == set(), "requirements nothing imports"
