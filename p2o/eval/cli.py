"""`p2o eval`: score a checkpoint on the math benchmarks; `p2o eval compare`: runs side by side.

    p2o eval --model runs/p2o/hf --data-dir benchmarks/ --benchmarks all --out runs/p2o/eval
    p2o eval --model tiny-qwen3 --data-dir benchmarks/ --benchmarks math500 --limit 8 --max-new-tokens 32 --out /tmp/e
    p2o eval --model runs/p2o/checkpoints/step_000390 --config configs/qwen3_4b_p2o_deepmath.yaml ...  # Megatron
    p2o eval compare runs/grpo/eval runs/p2o/eval --bootstrap 2000 --seed 0

`--config` takes a training YAML so the prompt (user template, system message), the thinking mode and the
verifier settings are those the checkpoint was trained with. See docs/evaluation.md for the protocol.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from contextlib import nullcontext
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # what to evaluate
    parser.add_argument("--model", default=None, help="HF model directory or embedded name (default: the config's model.path)")
    parser.add_argument("--hf-config", default=None,
                        help="Megatron checkpoints without hf_config/: the HF model dir they were trained from "
                             "(default with --config: the config's model.path)")
    parser.add_argument("--config", default=None, help="training YAML: prompt, model.thinking and reward settings")
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--label", default=None, help="name of this run in tables (default: the output folder name)")
    # benchmarks
    parser.add_argument("--benchmarks", default=None,
                        help="comma-separated names or 'all' (the paper's six); default: the --file names, else all")
    parser.add_argument("--data-dir", default=None, help="folder with <name>.jsonl/.json/.parquet or <name>/ per benchmark")
    parser.add_argument("--file", action="append", default=[], metavar="NAME=PATH",
                        help="explicit file for a benchmark; a NAME outside the registry is a local benchmark "
                             "in P2O's problem format (id, question, answer)")
    parser.add_argument("--limit", type=int, default=0, help="first N problems per benchmark (0: all)")
    parser.add_argument("--out", default=None, help="output run directory")
    # protocol
    parser.add_argument("--samples", type=int, default=16, help="responses per problem on sampled benchmarks")
    parser.add_argument("--temperature", type=float, default=0.6, help="temperature on sampled benchmarks")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=12288, help="maximum response length in tokens")
    parser.add_argument("--sampled-below", type=int, default=100,
                        help="benchmarks with fewer problems (full release) are sampled, the rest greedy")
    parser.add_argument("--pass-k", default="1,4,8,16", help="pass@k values to report on sampled benchmarks")
    parser.add_argument("--seed", type=int, default=0, help="base sampling seed")
    parser.add_argument("--template-file", default=None, help="a prompt template z to insert as T(x, z)")
    parser.add_argument("--no-responses", action="store_true", help="do not store response texts")
    parser.add_argument("--resume", action="store_true",
                        help="keep benchmarks already finished in --out by a run with the same model and settings")
    # runtime (defaults: the config's rollout / model sections)
    parser.add_argument("--engine", default=None, choices=("hf", "vllm"), help="generation engine (rollout.engine)")
    parser.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"), help="HF engine device (rollout.device)")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16"), help="weights dtype (model.dtype)")
    parser.add_argument("--batch-size", type=int, default=32, help="problems per engine call")
    parser.add_argument("--max-batch-size", type=int, default=None, help="sequences decoded together (rollout.max_batch_size)")
    parser.add_argument("--max-prompt-tokens", type=int, default=4096, help="longer prompts are an error")
    sub = parser.add_subparsers(dest="eval_command", metavar="ACTION")
    c = sub.add_parser("compare", help="side-by-side table of run directories with deltas and a bootstrap CI")
    c.add_argument("runs", nargs="+", help="run directories; the first is the baseline")
    c.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates")
    c.add_argument("--seed", type=int, default=0, dest="compare_seed", help="bootstrap seed")
    c.add_argument("--confidence", type=float, default=0.95)
    c.add_argument("--out", default=None, dest="compare_out", help="also write the table to this Markdown file")


def main(args: argparse.Namespace) -> int:
    if getattr(args, "eval_command", None) == "compare":
        return compare_main(args)
    return evaluate_main(args)


def compare_main(args: argparse.Namespace) -> int:
    from p2o.atomic import atomic_write_text
    from p2o.eval.compare import compare_runs, comparison_markdown
    from p2o.eval.results import read_run

    try:
        runs = [read_run(r) for r in args.runs]
        table = comparison_markdown(compare_runs(runs, samples=args.bootstrap, seed=args.compare_seed,
                                                 confidence=args.confidence))
    except (OSError, ValueError) as e:
        print(f"p2o eval compare: {e}", file=sys.stderr)
        return 2
    print(table, end="")
    if args.compare_out:
        atomic_write_text(Path(args.compare_out), table)
    return 0


def evaluate_main(args: argparse.Namespace) -> int:
    from p2o.config import ConfigError, load_config
    from p2o.eval.benchmarks import BenchmarkError, get_spec, is_registered, load_benchmark, local_spec, parse_names
    from p2o.eval.checkpoint import resolve_checkpoint
    from p2o.eval.harness import EvalSettings

    try:
        cfg = load_config(args.config, args.override)
        if args.out is None:
            raise ValueError("--out: an output directory is required")
        files: dict[str, list[str]] = {}
        for item in args.file:
            name, sep, path = item.partition("=")
            name = name.strip()
            if not sep or not path or not name:
                raise ValueError(f"--file {item}: expected NAME=PATH")
            files.setdefault(get_spec(name).name if is_registered(name) else local_spec(name, 0).name, []).append(path)
        names = parse_names(args.benchmarks or ",".join(files) or "all", local=tuple(files))
        if args.data_dir is None and not all(n in files for n in names):
            raise ValueError("--data-dir: required unless every benchmark is given with --file NAME=PATH")
        loaded = {n: load_benchmark(n, args.data_dir, files.get(n)) for n in names}
        # a local benchmark's protocol follows its full size, as a registered one's follows its public release
        specs = {n: get_spec(n) if is_registered(n) else local_spec(n, len(ps)) for n, ps in loaded.items()}
        problems = {n: ps[:args.limit] if args.limit > 0 else ps for n, ps in loaded.items()}
        template = Path(args.template_file).read_text(encoding="utf-8") if args.template_file else ""
        settings = EvalSettings(
            samples=args.samples, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
            max_new_tokens=args.max_new_tokens, sampled_below=args.sampled_below,
            pass_ks=tuple(int(k) for k in args.pass_k.split(",") if k.strip()), seed=args.seed,
            batch_size=args.batch_size, thinking=cfg.model.thinking, user_template=cfg.prompt.user_template,
            system=cfg.prompt.system, template=template, keep_responses=not args.no_responses)
        hf_config = args.hf_config or (cfg.model.path if args.config and args.model else None)
        model_dir = resolve_checkpoint(args.model or cfg.model.path, cfg.model.cache_dir, cfg.model.init_seed,
                                       hf_config=hf_config, convert_dir=Path(args.out) / "hf_model")
    except (BenchmarkError, ConfigError, OSError, ValueError) as e:
        print(f"p2o eval: {e}", file=sys.stderr)
        return 2
    from megatron_bridge.launch import single_rank_world

    # vLLM's external launcher needs a torch.distributed world: this process alone, unless under torchrun
    alone = (args.engine or cfg.rollout.engine) == "vllm" and "RANK" not in os.environ
    with single_rank_world() if alone else nullcontext():
        return _evaluate(args, cfg, model_dir, names, specs, problems, settings)


def _evaluate(args: argparse.Namespace, cfg, model_dir: Path, names: list[str], specs: dict, problems: dict,
              settings) -> int:
    """Build the engine and score every benchmark in `names`, writing the run after each one."""
    from p2o.eval.harness import run_benchmark
    from p2o.eval.results import load_finished, write_run
    from p2o.reward import Verifier

    try:
        engine = build_engine(args, cfg, model_dir)
    except (ImportError, RuntimeError, ValueError) as e:
        print(f"p2o eval: {e}", file=sys.stderr)
        return 2
    label = args.label or Path(args.out).name
    info = {"model": str(args.model or cfg.model.path), "model_dir": str(model_dir),
            "engine": args.engine or cfg.rollout.engine, "settings": vars(settings), "limit": args.limit}
    finished = load_finished(args.out, info) if args.resume else {}
    results = []
    with Verifier(cfg.reward) as scorer:
        for name in names:
            done = finished.get(name)
            if done is not None and [p.id for p in done.problems] == [p.id for p in problems[name]]:
                log.info("%s: kept from the previous run in %s", name, args.out)
                results.append(done)
                continue
            log.info("evaluating %s (%d problems)", name, len(problems[name]))
            results.append(run_benchmark(engine, engine.tokenizer, scorer, specs[name], problems[name], settings))
            write_run(args.out, results, label, info)  # after every benchmark, so an interrupted run can resume
    out = write_run(args.out, results, label, info)
    print((out / "summary.md").read_text(encoding="utf-8"), end="")
    return 0


def build_engine(args: argparse.Namespace, cfg, model_dir: Path):
    """The engine of `p2o.rollout.factory` for the config's rollout/model sections with the CLI's overrides."""
    from dataclasses import replace

    from p2o.rollout.factory import build_engine as build

    rollout = replace(cfg.rollout, engine=args.engine or cfg.rollout.engine, device=args.device or cfg.rollout.device,
                      max_batch_size=args.max_batch_size or cfg.rollout.max_batch_size, seed=args.seed,
                      max_prompt_tokens=args.max_prompt_tokens)
    model = replace(cfg.model, dtype=args.dtype or cfg.model.dtype)
    extra = {"max_model_len": args.max_prompt_tokens + args.max_new_tokens} if rollout.engine == "vllm" else {}
    return build(rollout, model, model_dir, **extra)
