"""The package layering of docs/design.md ("Layering"), enforced by reading every import with `ast`.

Every `import` / `from ... import` in every .py file of the shipped packages counts, at module level or inside a
function (a lazy import is still a dependency). A unit is `kernels`, `kernels.bench`, `megatron_bridge`, `slurm`,
the `p2o` package root, or a direct child of `p2o` (`p2o.algo`, `p2o.gepa`, `p2o.config`, ...; a subpackage counts
as one unit whatever its inner layout). Tests may import anything and are not checked.
"""
from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from tests.import_graph import from_module

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("p2o", "kernels", "megatron_bridge", "slurm")

# ----------------------------------------------------------------------------- the rule (docs/design.md)
FOUNDATION = {"p2o", "p2o.config", "p2o.limits", "p2o.jsonl", "p2o.atomic", "p2o.logs", "p2o.models", "p2o.prompts",
              "p2o.policy_api", "p2o.server", "p2o.seeds"}
"""Low-level p2o modules: configuration, limits, file formats and atomic writes, logging set-up, model paths, prompt
formatting, derived seeds, the policy-backend contract and the guarded HTTP stack. They import only each other (plus the one exception below)."""
BRIDGE_P2O = {"p2o", "p2o.config", "p2o.models", "p2o.policy_api", "p2o.jsonl", "p2o.atomic"}
"""The p2o modules megatron_bridge may import."""
ENTRY_POINTS = {"p2o.cli", "p2o.config_cli", "p2o.convert_cli", "p2o.bench", "p2o.smoke", "p2o.doctor", "p2o.experiment", "p2o.plan",
                "kernels.bench", "slurm"}
"""Commands, benchmarks, planners and experiments: they may import everything, and nothing imports them."""

_BELOW_TRAIN = {"kernels", "megatron_bridge", "p2o.algo", "p2o.data", "p2o.reward", "p2o.telemetry", "p2o.rollout",
                "p2o.gepa", "p2o.eval", "p2o.dry_run"} | FOUNDATION
ALLOWED: dict[str, set[str]] = {
    "kernels": set(),
    **{u: FOUNDATION for u in FOUNDATION},
    "megatron_bridge": {"kernels"} | BRIDGE_P2O,
    "p2o.reward": FOUNDATION,
    "p2o.telemetry": FOUNDATION,
    "p2o.data": FOUNDATION | {"p2o.reward"},
    "p2o.algo": {"kernels", "p2o.data"} | FOUNDATION,
    "p2o.gepa": FOUNDATION | {"p2o.data", "p2o.reward"},
    "p2o.rollout": FOUNDATION | {"megatron_bridge", "p2o.data", "p2o.reward"},
    "p2o.eval": FOUNDATION | {"megatron_bridge", "p2o.data", "p2o.reward", "p2o.rollout"},
    "p2o.dry_run": FOUNDATION | {"p2o.gepa"},
    "p2o.train": _BELOW_TRAIN,
}
"""unit -> the units it may import (itself always)."""

EXCEPTIONS: dict[tuple[str, str], str] = {
    ("p2o.limits", "p2o.gepa"): "the reflection prompt's token margin, a constant of the GEPA reflection step",
    ("p2o.data", "p2o.eval"): "`p2o data prepare` writes the evaluation benchmarks with the harness's loader",
}
"""Upward edges that exist today, each with its reason (debt: move the shared piece down instead of adding one)."""

KERNELS_THIRD_PARTY = {"torch", "triton"}
"""`kernels` imports the standard library, torch and triton, nothing else."""
HEAVY = {"megatron", "vllm", "transformer_engine", "apex"}
"""GPU-stack libraries: never imported by the algorithm, the contract or the foundation; elsewhere in p2o only
inside functions (so `import p2o.x` works on a machine without them)."""
NO_HEAVY = FOUNDATION | {"p2o.algo", "p2o.gepa", "p2o.data", "p2o.reward", "p2o.telemetry"}


# ----------------------------------------------------------------------------- the checker
def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "kernels" and len(parts) > 1 and parts[1] == "bench":
        return "kernels.bench"
    if parts[0] == "p2o" and len(parts) > 1:
        return f"p2o.{parts[1]}"
    return parts[0]


def imports_of(path: Path, root: Path) -> Iterator[tuple[int, str, bool]]:
    """(line, absolute module, at module level) of every import in `path`; `from pkg import name` yields
    `pkg.name` when `name` is a module or package of this repository."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    top_level = {id(n) for n in tree.body}
    top_level |= {id(c) for n in tree.body if isinstance(n, (ast.If, ast.Try)) for c in ast.walk(n)}
    for node in ast.walk(tree):
        at_top = id(node) in top_level
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, at_top
        elif isinstance(node, ast.ImportFrom):
            module = from_module(node, package)
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                as_path = root / sub.replace(".", "/")
                yield node.lineno, sub if as_path.with_suffix(".py").exists() or as_path.is_dir() else module, at_top


def violations(root: Path, files: Iterable[Path]) -> list[str]:
    """Every import in `files` (under `root`) that breaks the rule, as 'file:line: what and why'."""
    out = []
    stdlib = sys.stdlib_module_names
    for path in sorted(files):
        rel = path.relative_to(root)
        src = unit_of(module_name(path, root))
        for line, module, at_top in imports_of(path, root):
            top = module.split(".")[0]
            where = f"{rel}:{line}: {src} -> "
            if top in PACKAGES:
                dst = unit_of(module)
                if dst == src or src in ENTRY_POINTS or (src, dst) in EXCEPTIONS:
                    continue
                if src not in ALLOWED:
                    out.append(f"{where}{dst} (import {module}): unit {src} has no row in the layering table; add it "
                               "to ALLOWED here and to docs/design.md (Layering)")
                elif dst in ENTRY_POINTS or dst not in ALLOWED[src]:
                    out.append(f"{where}{dst} (import {module}) is a forbidden edge; {src} may import only "
                               f"{', '.join(sorted(ALLOWED[src])) or 'no project package'} (docs/design.md, Layering)")
            elif src == "kernels" and top not in stdlib and top not in KERNELS_THIRD_PARTY:
                out.append(f"{where}{top} (import {module}): kernels may import only the standard library, "
                           f"{', '.join(sorted(KERNELS_THIRD_PARTY))} (docs/design.md, Layering)")
            elif top in HEAVY and src in NO_HEAVY:
                out.append(f"{where}{top} (import {module}): {src} must not import the GPU stack "
                           f"({', '.join(sorted(HEAVY))}) (docs/design.md, Layering)")
            elif top in HEAVY and src.startswith("p2o") and at_top:
                out.append(f"{where}{top} (import {module}) at module level: p2o imports the GPU stack only inside "
                           "functions (docs/design.md, Layering)")
    return list(dict.fromkeys(out))  # `from m import a, b` reports its edge once


def shipped_files(root: Path) -> list[Path]:
    return [p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")]


# ----------------------------------------------------------------------------- tests
def test_repository_follows_the_layering():
    files = shipped_files(REPO)
    assert len(files) > 100 and any(p.name == "policy.py" and p.parent.name == "megatron_bridge" for p in files)
    problems = violations(REPO, files)
    assert not problems, "imports that break the layering:\n" + "\n".join(problems)


def test_every_exception_is_still_needed():
    """An exception whose edge disappeared must be removed from the table."""
    seen = set()
    for path in shipped_files(REPO):
        src = unit_of(module_name(path, REPO))
        seen |= {(src, unit_of(m)) for _, m, _ in imports_of(path, REPO) if m.split(".")[0] in PACKAGES}
    assert set(EXCEPTIONS) <= seen, f"stale layering exceptions: {sorted(set(EXCEPTIONS) - seen)}"


def _tree(tmp_path: Path, files: dict[str, str]) -> list[Path]:
    for name, text in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for pkg in ("p2o", "p2o/train", "p2o/algo", "kernels", "megatron_bridge"):
        (tmp_path / pkg).mkdir(parents=True, exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    return [tmp_path / name for name in files]


def test_checker_reports_forbidden_edges(tmp_path):
    """The checker fails on the edges the rule forbids, naming file, line and edge, lazy imports included."""
    files = _tree(tmp_path, {
        "megatron_bridge/backend.py": "import torch\nfrom p2o.train.policy import SequenceBatch\n",
        "kernels/op.py": "import torch\n\n\ndef f():\n    from p2o.algo import grpo\n    import vllm\n",
        "p2o/algo/loss.py": "from .. import policy_api\nfrom ..train import loop\n\n\ndef g():\n    import megatron.core\n",
        "p2o/rollout/engine.py": "import vllm\n\n\ndef h():\n    import vllm.sampling_params\n",
        "p2o/newthing.py": "from p2o import config\n",
        "p2o/train/policy.py": "", "p2o/train/loop.py": "", "p2o/algo/grpo.py": "", "p2o/policy_api.py": "",
        "p2o/config.py": "",
    })
    problems = violations(tmp_path, files)
    text = "\n".join(problems)
    assert "megatron_bridge/backend.py:2: megatron_bridge -> p2o.train (import p2o.train.policy) is a forbidden edge" in text
    assert "kernels/op.py:5: kernels -> p2o.algo (import p2o.algo.grpo) is a forbidden edge" in text
    assert "kernels/op.py:6: kernels -> vllm" in text
    assert "p2o/algo/loss.py:2: p2o.algo -> p2o.train (import p2o.train.loop) is a forbidden edge" in text
    assert "p2o/algo/loss.py:6: p2o.algo -> megatron (import megatron.core): p2o.algo must not import the GPU stack" in text
    assert "p2o/rollout/engine.py:1: p2o.rollout -> vllm (import vllm) at module level" in text
    assert "p2o/newthing.py:1: p2o.newthing -> p2o.config (import p2o.config): unit p2o.newthing has no row" in text
    assert len(problems) == 7, text  # the relative `from .. import policy_api` and the lazy vllm import are fine


def test_checker_accepts_the_allowed_edges(tmp_path):
    files = _tree(tmp_path, {
        "megatron_bridge/backend.py": "import megatron.core\nfrom kernels import op\nfrom p2o.policy_api import X\n",
        "kernels/op.py": "import math\nimport torch\nimport triton.language as tl\nfrom kernels.dispatch import f\n",
        "p2o/algo/loss.py": "from p2o.policy_api import X\n\n\ndef f():\n    from kernels import op\n",
        "p2o/train/loop.py": "from megatron_bridge import backend\nfrom p2o.algo import loss\n",
        "p2o/policy_api.py": "", "kernels/dispatch.py": "",
    })
    assert violations(tmp_path, files) == []
