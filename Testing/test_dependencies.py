"""Every third-party module the engine imports is something ``pip install`` brings: a declared
dependency, an extra named where it is needed, or (for the scene package only) Slicer itself.
CI installs the test extra, whose packages pull in more, so a missing declaration would
otherwise only show on a user's fresh install."""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "LiverTumorRefine" / "LiverTumorRefineLib"
# import name -> distribution name, where they differ
DISTRIBUTIONS = {"SimpleITK": "simpleitk"}
SLICER_PROVIDED = {"slicer", "vtk", "qt", "ctk"}


def declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].strip().lower() for r in requirements}
    return names(project["dependencies"]), {k: names(v) for k, v in project["optional-dependencies"].items()}


def imports(path: Path) -> set[str]:
    """Top-level third-party modules ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "LiverTumorRefineLib"}


def test_every_engine_import_is_a_declared_dependency():
    required, extras = declared()
    optional = set().union(*(names for extra, names in extras.items() if extra != "test"))
    undeclared = {}
    for path in LIB.rglob("*.py"):
        for module in imports(path):
            name = DISTRIBUTIONS.get(module, module).lower()
            in_scene = path.relative_to(LIB).parts[0] == "scene"
            if name in required or name in optional or (in_scene and module in SLICER_PROVIDED):
                continue
            undeclared.setdefault(module, []).append(str(path.relative_to(LIB)))
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_the_test_extra_is_not_what_makes_the_engine_importable():
    """The check above counts only the runtime dependencies and the feature extras (lits, onnx),
    never the test extra: medpy there pulls in scipy, which hid scipy's missing declaration."""
    required, extras = declared()
    assert "scipy" in required
    assert {"medpy", "pytest"} <= extras["test"]
