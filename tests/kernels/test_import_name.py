"""P2O's top-level `kernels` package is not Hugging Face's `kernels` (the kernel hub transformers probes for).

transformers' `is_kernels_available()` finds an importable `kernels` and reads the version of the distribution
`importlib.metadata.packages_distributions()` maps it to; if that version is in its supported window it imports
hub classes from it. P2O's install metadata does not declare `kernels` as a top-level name (setup.py), so the
probe finds no version whatever P2O's own version is.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from p2o.doctor import Facts, kernels_name_check

REPO = Path(__file__).resolve().parents[2]
SITE = Path(torch.__file__).resolve().parents[1]  # this environment's site-packages


def _top_level_written_by_setup(tmp_path: Path) -> list[str]:
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)], cwd=REPO,
                   check=True, capture_output=True, timeout=300)
    return (tmp_path / "p2o.egg-info" / "top_level.txt").read_text().split()


def test_setup_does_not_declare_kernels_as_a_top_level_name(tmp_path):
    assert _top_level_written_by_setup(tmp_path) == ["megatron_bridge", "p2o"]


def _site_without_p2o(tmp_path: Path) -> Path:
    """A view of site-packages (symlinks) without P2O's own install (its dist-info and editable hooks)."""
    view = tmp_path / "site"
    view.mkdir()
    for entry in SITE.iterdir():
        if entry.name.startswith(("p2o", "__editable__")) or entry.name in ("kernels", "megatron_bridge"):
            continue
        (view / entry.name).symlink_to(entry)
    return view


def _installed_p2o(tmp_path: Path, version: str, declare_kernels: bool) -> Path:
    """P2O's wheel (built from this tree) unpacked as an install of `version`."""
    src, wheels = tmp_path / "src", tmp_path / "wheels"
    if not src.exists():  # a copy: the build writes build/ and *.egg-info next to setup.py
        src.mkdir()
        for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
            shutil.copy2(REPO / name, src / name)
        for pkg in ("p2o", "kernels", "megatron_bridge"):
            shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    if not wheels.exists():
        subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(wheels)], check=True, capture_output=True, timeout=600, cwd=tmp_path)
    target = tmp_path / f"install-{version}-{declare_kernels}"
    with zipfile.ZipFile(next(wheels.glob("p2o-*.whl"))) as z:
        z.extractall(target)
    info = next(target.glob("p2o-*.dist-info"))
    meta = info / "METADATA"
    meta.write_text("".join(f"Version: {version}\n" if line.startswith("Version:") else line
                            for line in meta.read_text().splitlines(keepends=True)))
    top = info / "top_level.txt"
    if declare_kernels:
        top.write_text(top.read_text() + "kernels\n")
    info.rename(target / f"p2o-{version}.dist-info")
    return target


PROBE = """
import importlib.metadata as md, sys
sys.path[:0] = sys.argv[1:3]
import kernels
from transformers.utils.import_utils import KERNELS_MAX_VERSION, KERNELS_MIN_VERSION, is_kernels_available
assert kernels.__file__.startswith(sys.argv[1]), kernels.__file__
assert md.version("p2o") == sys.argv[3], md.version("p2o")
print(is_kernels_available(), KERNELS_MIN_VERSION)
"""


@pytest.mark.slow
def test_an_installed_p2o_is_not_taken_for_the_kernel_hub_whatever_its_version(tmp_path):
    """A real install of P2O's wheel, versioned inside transformers' `kernels` window: the probe stays off. The
    same install declaring `kernels` (what setuptools writes by default) is taken for the hub: the control."""
    from transformers.utils.import_utils import KERNELS_MIN_VERSION

    in_window = KERNELS_MIN_VERSION  # e.g. 0.17.0: a version P2O may well reach
    site = _site_without_p2o(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "USE_HUB_KERNELS")}

    def probe(install: Path) -> str:
        r = subprocess.run([sys.executable, "-S", "-c", PROBE, str(install), str(site), in_window], env=env,
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout.split()[0]

    assert probe(_installed_p2o(tmp_path, in_window, declare_kernels=False)) == "False"
    assert probe(_installed_p2o(tmp_path, in_window, declare_kernels=True)) == "True"  # what the fix prevents


FRESH_LOGITS = """
import sys
sys.modules["kernels"] = None  # no top-level `kernels` at all in this process
import torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
with torch.no_grad():
    torch.save(m(torch.tensor([[1, 5, 9, 42, 7, 3]])).logits, sys.argv[2])
"""


@pytest.mark.slow
def test_with_our_kernels_imported_transformers_hub_stays_off_and_loading_is_unaffected(tiny_model_dir, tmp_path):
    import kernels  # ours, imported before transformers probes

    assert Path(kernels.__file__).resolve().parent == REPO / "kernels"
    import transformers.integrations.hub_kernels as hub
    from transformers import AutoModelForCausalLM
    from transformers.utils.import_utils import is_kernels_available

    assert not is_kernels_available() and not hub.is_kernels_available()
    assert not hasattr(hub, "get_kernel_hub")  # bound only when transformers believes the hub is installed

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ours = model(torch.tensor([[1, 5, 9, 42, 7, 3]])).logits
    out = tmp_path / "fresh.pt"
    r = subprocess.run([sys.executable, "-c", FRESH_LOGITS, str(tiny_model_dir), str(out)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    fresh = torch.load(out)
    assert ours.shape == fresh.shape and torch.equal(ours, fresh)


def test_doctor_warns_when_the_hub_package_is_installed_alongside():
    clean = kernels_name_check(Facts(python="3.11", versions={"kernels": None}, hub_kernels_detected=False))
    assert clean.available
    hub = kernels_name_check(Facts(python="3.11", versions={"kernels": "0.17.1"}, hub_kernels_detected=True))
    assert not hub.available and "pip uninstall kernels" in hub.detail
    stale = kernels_name_check(Facts(python="3.11", versions={"kernels": None}, hub_kernels_detected=True))
    assert not stale.available and "reinstall" in stale.detail
