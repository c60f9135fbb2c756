"""`p2o bench convert`: HF <-> Megatron conversion time and peak memory.

    p2o bench convert [--model smollm2-135m] [--tp 1] [--out convert_bench.csv]

Protocol: the model is resolved once (an embedded name, an HF dir, or a config.json with seeded random init);
then HF -> Megatron (`--tp` ranks) and Megatron -> HF (`--tp` ranks, 2 GiB shards) run as in `p2o convert`, each in
freshly spawned ranks. Per direction: wall seconds including rank start-up and imports (`wall_s`), seconds and
CPU seconds of the conversion proper inside the ranks (`convert_s`, `cpu_s`: build + load/save, the latter
insensitive to other load on the machine), and the peak RSS of the largest rank (`peak_rss_mib`, from
getrusage). The round trip is checked bit-exact. Prints a table and writes CSV rows (benchmark, direction, tp,
model, params, model_mib, wall_s, convert_s, cpu_s, peak_rss_mib, exact, machine, load_avg_1m, commit, timestamp).
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import resource
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from megatron_bridge.launch import spawn


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m", help="embedded name, HF dir or config.json")
    parser.add_argument("--tp", type=int, default=1, help="ranks for each direction (default: %(default)s)")
    parser.add_argument("--cache-dir", default="~/.cache/p2o")
    parser.add_argument("--out", default="convert_bench.csv", help="CSV output ('' = none)")


def measured(fn, args: tuple, stats_dir: str) -> None:
    """Run a conversion rank function and record its time, CPU time and peak RSS."""
    import torch.distributed as dist

    t0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    stats = dict(convert_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0,
                 peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    rank = int(os.environ.get("RANK", "0")) if not dist.is_initialized() else dist.get_rank()
    torch.save(stats, Path(stats_dir) / f"rank{rank}.pt")


def _run(fn, nprocs: int, args: tuple) -> dict:
    with tempfile.TemporaryDirectory(prefix="p2o-bench-") as stats_dir:
        t0 = time.perf_counter()
        spawn(measured, nprocs, (fn, args, stats_dir))
        wall = time.perf_counter() - t0
        ranks = [torch.load(p) for p in sorted(Path(stats_dir).glob("rank*.pt"))]
    return dict(wall_s=wall, convert_s=max(r["convert_s"] for r in ranks), cpu_s=max(r["cpu_s"] for r in ranks),
                peak_rss_mib=max(r["peak_rss_mib"] for r in ranks))


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def main(args: argparse.Namespace) -> int:
    from megatron_bridge.convert import (
        HF_CONFIG_SUBDIR,
        MODEL_SUBDIR,
        copy_hf_side_files,
        hf_to_megatron_worker,
        megatron_to_hf_worker,
    )
    from megatron_bridge.hf_io import HFCheckpoint
    from megatron_bridge.provider import bridge_and_provider
    from p2o.models import resolve_model_dir

    hf_dir = resolve_model_dir(args.model, cache_dir=args.cache_dir)
    bridge_and_provider(hf_dir)[1].check_layout(args.tp, 1)
    src = HFCheckpoint(hf_dir)
    params = sum(torch.Size(src.shape(n)).numel() for n in src.names())
    model_mib = sum((hf_dir / f).stat().st_size for f in set(src.weight_map.values())) / 2**20
    rows = []
    with tempfile.TemporaryDirectory(prefix="p2o-bench-convert-") as tmp:
        mcore, back = Path(tmp) / "mcore", Path(tmp) / "hf"
        mcore.mkdir()
        r = _run(hf_to_megatron_worker, args.tp, (str(hf_dir), str(mcore), args.tp, 1))
        copy_hf_side_files(hf_dir, mcore / HF_CONFIG_SUBDIR)
        rows.append(dict(direction="hf-to-megatron", **r))
        r = _run(megatron_to_hf_worker, args.tp,
                 (str(mcore / MODEL_SUBDIR), str(mcore / HF_CONFIG_SUBDIR), str(back), args.tp, 1, 2 * 1024**3))
        out = HFCheckpoint(back)
        exact = sorted(out.names()) == sorted(src.names()) and all(torch.equal(src.get(n), out.get(n))
                                                                    for n in src.names())
        rows.append(dict(direction="megatron-to-hf", **r))
    machine = f"{platform.machine()} {len(os.sched_getaffinity(0))}-core CPU" + (
        f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU")
    load = os.getloadavg()[0]
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    commit = _commit()
    print(f"{args.model}: {params / 1e6:.1f} M params, {model_mib:.0f} MiB safetensors; {machine}, load {load:.2f}")
    print(f"{'direction':16s} {'tp':>3s} {'wall_s':>8s} {'convert_s':>10s} {'cpu_s':>8s} {'peak_rss_MiB':>13s} exact")
    for r in rows:
        print(f"{r['direction']:16s} {args.tp:3d} {r['wall_s']:8.1f} {r['convert_s']:10.1f} {r['cpu_s']:8.1f} "
              f"{r['peak_rss_mib']:13.0f} {exact}")
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = ["benchmark", "direction", "tp", "model", "params", "model_mib", "wall_s", "convert_s", "cpu_s",
                  "peak_rss_mib", "exact", "machine", "load_avg_1m", "commit", "timestamp"]
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for r in rows:
                w.writerow(dict(benchmark="convert", tp=args.tp, model=args.model, params=params,
                                model_mib=f"{model_mib:.1f}", exact=exact, machine=machine, load_avg_1m=f"{load:.2f}",
                                commit=commit, timestamp=stamp, **{k: f"{v:.2f}" for k, v in r.items()
                                                                    if k != "direction"}, direction=r["direction"]))
        print(f"wrote {path}")
    return 0 if exact else 1
