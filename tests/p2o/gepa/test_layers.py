"""The GEPA package's layering, read from the source with `ast`: `core` imports neither `adapters` nor `service`
nor any module that talks to the network, spawns processes or walks files; `adapters` never import `service`.
Imports inside functions count too (a lazy import is still a dependency)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.import_graph import from_module

GEPA = Path(__file__).resolve().parents[3] / "p2o" / "gepa"

IO_MODULES = {"socket", "ssl", "http", "urllib", "urllib3", "requests", "httpx", "aiohttp", "openai", "subprocess",
              "multiprocessing", "fastapi", "uvicorn", "starlette", "shutil", "tempfile", "pathlib", "glob", "io",
              "sqlite3", "pickle", "p2o.server", "p2o.rollout", "p2o.train"}
"""Modules the pure core may not import (top-level name or a dotted prefix)."""


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Absolute names of every module `path` (or `source`, read as if it lived at `path`) imports, relative
    imports resolved against its package."""
    package = ".".join(path.relative_to(GEPA.parents[1]).with_suffix("").parts[:-1])
    names: set[str] = set()
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = from_module(node, package)
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)  # `from p2o.gepa import service`
    return names


FILE_CALLS = {"open", "write_text", "write_bytes", "read_text", "read_bytes", "unlink", "mkdir", "rename",
              "replace", "rmtree"}
"""Calls that touch files (builtin `open`, pathlib and os methods by name): the core never makes them."""


def file_calls(source: str) -> list[str]:
    """Names of the calls in `source` that look like file access (`open(...)`, `x.write_text(...)`, ...)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if name in FILE_CALLS and not (name == "replace" and _is_str_replace(node)):
                found.append(f"{name} (line {node.lineno})")
    return found


def _is_str_replace(node: ast.Call) -> bool:
    """`text.replace(a, b)`: two positional arguments and no keywords (os.replace takes src, dst too, but the
    core does not import os, which the import check enforces)."""
    return len(node.args) == 2 and not node.keywords


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_files(layer: str) -> list[Path]:
    files = sorted((GEPA / layer).rglob("*.py"))
    assert files, f"no modules under {GEPA / layer}"
    return files


def test_the_package_has_three_layers_and_nothing_beside_them():
    flat = sorted(p.name for p in GEPA.glob("*.py") if p.name != "__init__.py")
    assert flat == [], f"modules outside core/adapters/service: {flat}"
    assert {p.name for p in GEPA.iterdir() if p.is_dir() and p.name != "__pycache__"} == {"core", "adapters", "service"}


@pytest.mark.parametrize("path", layer_files("core"), ids=lambda p: p.name)
def test_core_is_pure(path: Path):
    names = imported_modules(path)
    upward = sorted(n for n in names if within(n, "p2o.gepa.adapters") or within(n, "p2o.gepa.service"))
    assert not upward, f"{path.name} (core) imports {upward}"
    io = sorted(n for n in names if any(within(n, m) for m in IO_MODULES))
    assert not io, f"{path.name} (core) imports I/O modules {io}"
    assert "os" not in names and not any(within(n, "os.path") for n in names), f"{path.name} (core) imports os"
    assert not file_calls(path.read_text()), f"{path.name} (core) touches files: {file_calls(path.read_text())}"


@pytest.mark.parametrize("path", layer_files("adapters"), ids=lambda p: p.name)
def test_adapters_do_not_import_the_service(path: Path):
    upward = sorted(n for n in imported_modules(path) if within(n, "p2o.gepa.service"))
    assert not upward, f"{path.name} (adapter) imports {upward}"


def test_the_checker_sees_violations():
    """The reader itself: lazy, aliased, relative and `from package import module` forms are all found."""
    src = ("import os\nfrom ..service import jobs\nfrom p2o.gepa import adapters\n"
           "def f():\n    import httpx as h\n    from subprocess import run\n")
    names = imported_modules(GEPA / "core" / "probe.py", src)
    assert {"os", "p2o.gepa.service", "p2o.gepa.service.jobs", "p2o.gepa.adapters", "httpx", "subprocess"} <= names
    calls = file_calls("p.write_text('x')\nwith open('f') as f:\n    pass\ns = t.replace('a', 'b')\n")
    assert calls == ["write_text (line 1)", "open (line 2)"]
