"""What a module's `from ... import` statement names, shared by the import-rule tests (tests/test_layering.py,
tests/p2o/gepa/test_layers.py)."""
from __future__ import annotations

import ast


def from_module(node: ast.ImportFrom, package: str) -> str:
    """The absolute module of `from X import ...`, a relative X (level >= 1) resolved against `package` (the
    importing module's package, e.g. "p2o.gepa.core")."""
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = parts[: len(parts) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))
