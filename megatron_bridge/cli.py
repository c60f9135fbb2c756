"""`p2o convert`: HF <-> Megatron-Core checkpoints and logit parity checks.

    p2o convert hf-to-megatron --hf ~/models/Qwen3-4B --out ckpt/qwen3-4b-mcore [--tp 1 --pp 1]
    p2o convert megatron-to-hf --megatron ckpt/qwen3-4b-mcore --out ~/models/qwen3-4b-back [--shard-bytes N]
    p2o convert parity --hf tiny.json --tp 2 --pp 2        # exit 1 when max relative logit diff > --rel-tol

Each command spawns its tp x pp ranks itself (gloo without CUDA, nccl with it).
"""
from __future__ import annotations

import argparse
import sys

from megatron_bridge.parity import FP32_REL_TOL


def add_arguments(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """The conversion actions; returns the subparsers so that `p2o convert` can add the run-directory ones."""
    sub = parser.add_subparsers(dest="convert_command", metavar="ACTION", required=True)
    a = sub.add_parser("hf-to-megatron", help="HF safetensors -> Megatron dist checkpoint")
    a.add_argument("--hf", required=True, help="HF model dir, a config.json (seeded random init) or an embedded name")
    a.add_argument("--out", required=True, help="output directory (<out>/model, <out>/hf_config)")
    b = sub.add_parser("megatron-to-hf", help="Megatron dist checkpoint -> HF safetensors (sharded, with index)")
    b.add_argument("--megatron", required=True, help="directory written by hf-to-megatron, or a policy checkpoint")
    b.add_argument("--out", required=True, help="output HF directory")
    b.add_argument("--hf-config", default=None, help="HF config dir (when --megatron is a policy checkpoint)")
    b.add_argument("--shard-bytes", type=int, default=2 * 1024**3, help="maximum safetensors shard size")
    c = sub.add_parser("parity", help="HF vs Megatron logits under TP x PP")
    c.add_argument("--hf", required=True, help="HF model dir, a config.json (seeded random init) or an embedded name")
    c.add_argument("--vpp", type=int, default=1, help="virtual pipeline stages (interleaved schedule)")
    c.add_argument("--rel-tol", type=float, default=FP32_REL_TOL, help="max |diff| / max |logit| allowed")
    c.add_argument("--batch", type=int, default=2)
    c.add_argument("--seq-len", type=int, default=16)
    for p in (a, b, c):
        p.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks")
        p.add_argument("--pp", type=int, default=1, help="pipeline-parallel ranks")
    for p in (a, c):
        p.add_argument("--seed", type=int, default=1234, help="init seed when --hf is a config.json")
        p.add_argument("--cache-dir", default="~/.cache/p2o", help="where random-init / embedded models are cached")
    return sub


def main(args: argparse.Namespace) -> int:
    if args.tp < 1 or args.pp < 1:
        print(f"p2o convert: --tp and --pp must be >= 1 (got {args.tp}, {args.pp})", file=sys.stderr)
        return 2
    if args.convert_command == "hf-to-megatron":
        from megatron_bridge.convert import hf_to_megatron

        out = hf_to_megatron(args.hf, args.out, args.tp, args.pp, cache_dir=args.cache_dir, seed=args.seed)
        print(f"wrote {out}")
        return 0
    if args.convert_command == "megatron-to-hf":
        from megatron_bridge.convert import megatron_to_hf

        out = megatron_to_hf(args.megatron, args.out, args.tp, args.pp, args.shard_bytes, args.hf_config)
        print(f"wrote {out}")
        return 0
    from megatron_bridge.parity import check_parity

    (report,) = check_parity([args.hf], args.tp, args.pp, args.vpp, batch=args.batch, seq_len=args.seq_len,
                             seed=args.seed, cache_dir=args.cache_dir)
    status = "OK" if report.ok(args.rel_tol) else "FAIL"
    print(f"{status} {report.model_dir} tp={report.tp} pp={report.pp} vpp={args.vpp} logits {list(report.shape)}: "
          f"max abs diff {report.max_abs_diff:.3e}, rel diff {report.rel_diff:.3e} (tol {args.rel_tol:.1e})")
    return 0 if status == "OK" else 1
