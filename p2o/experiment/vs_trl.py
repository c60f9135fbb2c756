"""`p2o bench vs-trl`: our GRPO step against TRL's `GRPOTrainer` on identical work, in one invocation, A/B
alternated step by step.

The work (both sides):
  - SmolLM2-135M-Instruct, fp32 (`resolve_model_dir('smollm2-135m')`, the dequantised GGUF; the TRL side loads
    the same HF directory and refuses a quantization config),
  - `binary_problems(256, seed=1234)` (`p2o.data.arithmetic`; the exact rng call order is documented there),
    the user message "What is {a} {op} {b}? Let's think step by step and output the final answer within
    \\boxed{}." through the tokenizer's chat template (rendered once by `p2o.prompts`, so both sides see the same
    tokens),
  - 8 prompts x 4 generations = 32 completions per optimizer step, at most 64 new tokens, temperature 1.0,
    lr 1e-6 (constant), no KL, one optimizer step per 32 completions (4 micro-batches of 8 on both sides),
    token-mean loss over the step (TRL's `loss_type="dapo"`), clip 0.2, grad clip 1.0, AdamW(0.9, 0.999, wd 0.01),
  - the strict \\boxed{} integer reward: our side the product's `Verifier` (reward.fallback=none), TRL's side
    `trl_side.boxed_integer_reward` (a standard-library mirror of it; a test checks they agree).
Step I of every side uses problems [8 I, 8 I + 8) in file order.

Activation recomputation is part of the work: TRL's `GRPOConfig` turns gradient checkpointing on by default,
so by default (`--recompute full`) our sides run `train.recompute=full` (each layer's forward redone in the
backward); `--recompute none` turns it off on every side. The glibc malloc mode (`--malloc`, default keep:
freed memory stays in the process; see `p2o.train.malloc`) is also the same on every side: ours applies it with
mallopt, TRL's process gets the equivalent `MALLOC_*_` environment variables.

Sides (each its own process, so that peak memory is its own): "ours (skip zero-advantage rows)",
"ours (no skipping)" (`train.skip_zero_advantage_rows=false`) and "trl" (`trl_side.py` in its own virtual
environment, created by this command on first use with pinned versions; TRL is never a dependency of P2O).
All sides load first; then for each step every side runs that step while the others wait, in an order
rotated every step (A/B alternation), so slow drifts of a shared machine fall on every side alike.

Reported per side: medians over steps `--measure-from`..`--steps` (1-based) of the step wall time, generation
time (completions only) and training time (the rest of the step: reward, log-probs, update, weight sync),
peak RSS of the side's whole process tree (sampled every 0.2 s), and two CPU floors of the step from the
measured GEMM rate and memory bandwidth (`p2o.experiment.cpu_limits`): the floor of the required work (the
learning rows, no recomputation) and the floor of the work the side did (the rows it trained, recomputation
included), each with the side's distance to it ("x floor", "x work floor").
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from p2o.atomic import atomic_write
from p2o.experiment.lockstep import parse
from p2o.jsonl import write_jsonl

log = logging.getLogger(__name__)

TRL_VERSION = "1.13.0"
TRL_SIDE = Path(__file__).with_name("trl_side.py")
PROMPTS_PER_STEP, GENERATIONS, MAX_NEW_TOKENS = 8, 4, 64
SUMMARY_COLUMNS = ["side", "step_s", "generate_s", "train_s", "peak_rss_mib", "floor_s", "x_floor",
                   "work_floor_s", "x_work_floor", "step_vs_trl", "rss_vs_trl", "reward_mean", "zero_adv_frac",
                   "completion_tokens", "steps_measured"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m", help="model.path of both sides")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per side")
    parser.add_argument("--measure-from", type=int, default=2, help="first measured step (1-based); earlier ones warm up")
    parser.add_argument("--num-problems", type=int, default=256)
    parser.add_argument("--seed", type=int, default=1234, help="seed of the problem generator")
    parser.add_argument("--sides", default="ours-skip,ours-noskip,trl",
                        help="comma-separated subset of ours-skip, ours-noskip, trl")
    parser.add_argument("--out", default="bench_results/vs_trl", help="output directory (CSV, logs, problems)")
    parser.add_argument("--trl-venv", default="~/.cache/p2o/trl-venv",
                        help="virtual environment of the TRL side (created on first use)")
    parser.add_argument("--trl-version", default=TRL_VERSION)
    parser.add_argument("--no-install", action="store_true", help="never create the TRL environment; fail if absent")
    parser.add_argument("--ours-override", action="append", default=[],
                        help="extra config override for our side (repeatable), e.g. rollout.max_batch_size=16")
    parser.add_argument("--recompute", choices=("full", "none"), default="full",
                        help="activation recomputation on both sides: full (TRL's default gradient checkpointing; "
                             "ours train.recompute=full) or none")
    parser.add_argument("--malloc", choices=("keep", "release", "glibc"), default="keep",
                        help="glibc malloc mode of every side (p2o.train.malloc; TRL's side gets the same settings "
                             "as environment variables)")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="limit for one side's load or step")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: summarise the finished run in --out again from its CSVs (e.g. with "
                             "another --measure-from); the measured limits, RSS and settings are the run's own")


# ---------------------------------------------------------------------------- the TRL environment
def trl_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_trl_venv(venv: Path, version: str, install: bool = True) -> Path:
    """The TRL side's interpreter; creates `venv` with `trl==version` plus our torch/transformers/accelerate pins."""
    py = trl_python(venv)
    stamp = venv / "p2o-trl-version"
    if py.is_file() and stamp.is_file() and stamp.read_text().strip() == version:
        return py
    if not install:
        raise FileNotFoundError(f"--trl-venv {venv}: no TRL {version} environment there (run without --no-install)")
    import accelerate
    import torch
    import transformers

    pins = [f"trl=={version}", f"torch=={torch.__version__.split('+')[0]}",
            f"transformers=={transformers.__version__}", f"accelerate=={accelerate.__version__}", "datasets", "psutil", "requests"]
    log.info("creating the TRL environment %s: %s", venv, " ".join(pins))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *pins], check=True)
    stamp.write_text(version + "\n")
    return py


# ---------------------------------------------------------------------------- sides
SIDE_LABELS = {"ours-skip": "ours (skip zero-advantage rows)", "ours-noskip": "ours (no skipping)",
               "trl": "trl GRPOTrainer"}


@dataclass
class Side:
    """A side process in lock step; `peak_rss` is the largest sampled RSS of its process tree, in bytes."""

    name: str
    label: str
    cmd: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables of this side on top of the command's environment."""
    proc: subprocess.Popen | None = None
    peak_rss: int = 0
    ready: dict = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)

    def start(self, env: dict) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, env={**env, **self.env}, bufsize=1)

    def read_record(self, timeout_s: float) -> dict:
        """The next protocol record on the side's stdout (other lines go to its log)."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.time() + timeout_s
        for line in self.proc.stdout:
            rec = parse(line)
            if rec is not None:
                return rec
            self._log.write(line)
            if time.time() > deadline:
                break
        code = self.proc.poll()
        raise RuntimeError(f"side '{self.name}' ended or stalled without a record (exit code {code}); "
                           f"see {self.log_path}")

    def send(self, command: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            self.send("quit")
            self.proc.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class RSSSampler:
    """Samples the RSS of each side's process tree every `interval_s` and keeps the peak on the side."""

    def __init__(self, sides: list[Side], interval_s: float = 0.2):
        self.sides, self.interval_s = sides, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            for s in self.sides:
                if s.proc is None or s.proc.poll() is not None:
                    continue
                try:
                    root = psutil.Process(s.proc.pid)
                    rss = sum(p.memory_info().rss for p in [root] + root.children(recursive=True))
                except psutil.Error:
                    continue
                s.peak_rss = max(s.peak_rss, rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def side_commands(names: list[str], problems: Path, model_dir: Path, model: str, out: Path, steps: int,
                  trl_py: Path | None, ours_overrides: list[str], recompute: bool = True,
                  malloc: str = "keep") -> list[Side]:
    """One `Side` per name; `recompute`: activation recomputation on every side (TRL's gradient checkpointing,
    our `train.recompute=full`), else on none; `malloc`: the glibc malloc mode of every side (`p2o.train.malloc`:
    ours through `train.malloc`, TRL's through the equivalent environment variables)."""
    from p2o.train.malloc import malloc_env

    sides = []
    for name in names:
        env: dict[str, str] = {}
        if name in ("ours-skip", "ours-noskip"):
            skip = "true" if name == "ours-skip" else "false"
            cmd = [sys.executable, "-m", "p2o.experiment.ours_side", "--problems", str(problems),
                   "--run-dir", str(out / "runs" / name), f"model.path={model}",
                   f"train.skip_zero_advantage_rows={skip}", f"train.recompute={'full' if recompute else 'none'}",
                   f"train.malloc={malloc}", *ours_overrides]
        elif name == "trl":
            if trl_py is None:
                raise ValueError("sides: 'trl' needs the TRL environment")
            cmd = [str(trl_py), str(TRL_SIDE), "--problems", str(problems), "--model-dir", str(model_dir),
                   "--output-dir", str(out / "runs" / "trl"), "--steps", str(steps),
                   "--gradient-checkpointing", "true" if recompute else "false"]
            env = malloc_env(malloc)
        else:
            raise ValueError(f"--sides: unknown side '{name}'; expected ours-skip, ours-noskip or trl")
        sides.append(Side(name, SIDE_LABELS[name], cmd, out / "logs" / f"{name}.log", env))
    return sides


STEP_COLUMNS = ["side", "step", "order", "step_s", "generate_s", "verify_s", "old_logprob_s", "update_s",
                "weight_sync_s", "completion_tokens", "reward_mean", "zero_adv_frac", "skipped_rows", "peak_rss_mib"]


def run_lockstep(sides: list[Side], steps: int, timeout_s: float, env: dict,
                 steps_csv: Path | None = None) -> None:
    """Start the sides one after another (each loads alone), then run the steps in rotated order; the step
    records so far are rewritten to `steps_csv` after every step (a long run leaves partial results)."""
    for s in sides:
        s.start(env)
        s.ready = s.read_record(timeout_s)
        log.info("%s ready (%.1f s to load)", s.name, s.ready.get("load_s", 0.0))
    for i in range(steps):
        order = sides[i % len(sides):] + sides[:i % len(sides)]
        for s in order:
            s.send(f"step {i}")
            rec = s.read_record(timeout_s)
            rec["order"] = [x.name for x in order].index(s.name)
            rec["peak_rss_mib"] = s.peak_rss / 2**20
            s.steps.append(rec)
            log.info("step %d %s: %.2f s (generate %.2f s)", i + 1, s.name, rec["step_s"], rec["generate_s"])
            if steps_csv is not None:
                write_csv(steps_csv, [{**r, "side": x.name} for x in sides for r in x.steps], STEP_COLUMNS)


# ---------------------------------------------------------------------------- numbers
def summarize(sides: list[Side], measure_from: int, limits, work_by_step: list, recompute: str) -> list[dict]:
    """One summary row per side: medians over the measured steps, peak RSS, the two floors and ratios to TRL.

    `work_by_step[i](completion_tokens, trained_frac, flops_per_param_token)` is step i's `StepWork`. The floor of
    the required work trains the learning rows at 6 FLOPs per parameter and token; the floor of the work done
    trains the rows the side trained (all but its `skipped_rows`) with `recompute`'s FLOPs."""
    from p2o.experiment.cpu_limits import step_floor_s, training_flops_per_param_token

    rows_per_step = PROMPTS_PER_STEP * GENERATIONS
    done_flops = training_flops_per_param_token(recompute)

    rows = []
    for s in sides:
        measured = [r for r in s.steps if r["step"] + 1 >= measure_from]
        if not measured:
            raise ValueError(f"--measure-from {measure_from}: no measured steps of {len(s.steps)}")

        def med(key: str, measured: list[dict] = measured) -> float:
            return statistics.median(r[key] for r in measured)

        def floor_of(trained_frac, flops: float, measured: list[dict] = measured) -> float:
            return statistics.median(step_floor_s(work_by_step[r["step"]](r["completion_tokens"], trained_frac(r),
                                                                          flops), limits) for r in measured)

        floor = floor_of(lambda r: 1.0 - r["zero_adv_frac"], training_flops_per_param_token("none"))
        work_floor = floor_of(lambda r: 1.0 - (r.get("skipped_rows") or 0) / rows_per_step, done_flops)
        rows.append({"side": s.label, "step_s": med("step_s"), "generate_s": med("generate_s"),
                     "train_s": statistics.median(r["step_s"] - r["generate_s"] for r in measured),
                     "peak_rss_mib": s.peak_rss / 2**20, "floor_s": floor, "x_floor": med("step_s") / floor,
                     "work_floor_s": work_floor, "x_work_floor": med("step_s") / work_floor,
                     "reward_mean": statistics.fmean(r["reward_mean"] for r in s.steps),
                     "zero_adv_frac": statistics.fmean(r["zero_adv_frac"] for r in s.steps),
                     "completion_tokens": med("completion_tokens"), "steps_measured": len(measured)})
    trl = next((r for r in rows if r["side"].startswith("trl")), None)
    for r in rows:
        r["step_vs_trl"] = r["step_s"] / trl["step_s"] if trl else None
        r["rss_vs_trl"] = r["peak_rss_mib"] / trl["peak_rss_mib"] if trl and trl["peak_rss_mib"] else None
    return rows


def format_table(rows: list[dict]) -> str:
    head = ["side", "step s", "gen s", "train s", "peak RSS MiB", "floor s", "x floor", "work floor s",
            "x work floor", "step/TRL", "RSS/TRL"]
    keys = ["side", "step_s", "generate_s", "train_s", "peak_rss_mib", "floor_s", "x_floor", "work_floor_s",
            "x_work_floor", "step_vs_trl", "rss_vs_trl"]

    def cell(v):
        if v is None:
            return "-"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    table = [head] + [[cell(r[k]) for k in keys] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
                     for row in table)


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with atomic_write(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})


def load_run(out: Path) -> tuple[list[Side], dict]:
    """The sides of a finished run in `out` (step records from vs_trl_steps.csv, peak RSS from vs_trl.csv) and
    its metadata (the summary's columns after SUMMARY_COLUMNS: limits, params, load, date, settings)."""
    steps_csv, summary_csv = out / "vs_trl_steps.csv", out / "vs_trl.csv"
    for f in (steps_csv, summary_csv):
        if not f.is_file():
            raise FileNotFoundError(f"--report-only: {f} not found (run the benchmark with --out {out} first)")
    with summary_csv.open(newline="") as f:
        summary = list(csv.DictReader(f))
    with steps_csv.open(newline="") as f:
        step_rows = list(csv.DictReader(f))
    if not summary:
        raise ValueError(f"{summary_csv}: no rows")
    meta = {k: v for k, v in summary[0].items() if k not in SUMMARY_COLUMNS}
    for k in ("gemm_gflops", "mem_gbps"):
        meta[k] = float(meta[k])
    meta["threads"], meta["params"] = int(meta["threads"]), int(meta["params"])
    rss = {r["side"]: float(r["peak_rss_mib"]) for r in summary}
    ints = {"step", "order", "completion_tokens", "skipped_rows"}
    sides: dict[str, Side] = {}
    for line, r in enumerate(step_rows, start=2):
        name = r.pop("side")
        if name not in SIDE_LABELS:
            raise ValueError(f"{steps_csv}:{line}: unknown side '{name}'")
        rec = {k: (int(v) if k in ints else float(v)) for k, v in r.items() if v != ""}
        side = sides.setdefault(name, Side(name, SIDE_LABELS[name], [], out / "logs" / f"{name}.log"))
        side.steps.append(rec)
    for side in sides.values():
        side.steps.sort(key=lambda rec: rec["step"])
        side.peak_rss = int(rss.get(side.label, 0.0) * 2**20)
    return list(sides.values()), meta


def count_params(model_dir: Path) -> int:
    """Parameters stored in the model directory's safetensors files (tied weights once)."""
    from safetensors import safe_open

    total = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                total += _numel(st.get_slice(k).get_shape())
    return total


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def write_problems(path: Path, tokenizer, num: int, seed: int) -> list[int]:
    """The benchmark problems as jsonl (with the rendered chat prompt); returns each prompt's token count."""
    from p2o import prompts
    from p2o.config import PromptConfig
    from p2o.data.arithmetic import binary_problems

    user_template = PromptConfig().user_template
    records, lengths = [], []
    for p in binary_problems(num, seed=seed):
        msgs = prompts.messages(p.question, None, user_template, "")
        text = prompts.render(tokenizer, msgs, "off")
        lengths.append(len(prompts.encode(tokenizer, msgs, "off")))
        records.append({"id": p.id, "question": p.question, "answer": p.answer, "prompt_text": text})
    write_jsonl(path, records)
    return lengths


def work_by_step(prompt_lens: list[int], params: int, steps: int) -> list:
    """Step i's work as `summarize` wants it: (completion_tokens, trained_frac, flops_per_param_token) -> StepWork."""
    from p2o.experiment.cpu_limits import StepWork

    def work_of(step: int):
        ptoks = sum(prompt_lens[step * PROMPTS_PER_STEP:(step + 1) * PROMPTS_PER_STEP]) * GENERATIONS
        return lambda completion_tokens, trained_frac, flops: StepWork(
            params, ptoks, int(completion_tokens), MAX_NEW_TOKENS, learning_frac=float(trained_frac),
            train_flops_per_param_token=flops)

    return [work_of(i) for i in range(steps)]


def report(out: Path, sides: list[Side], limits, work: list, measure_from: int, meta: dict) -> None:
    """Print the summary table and write vs_trl.csv (one row per side, `meta` on every row)."""
    rows = summarize(sides, measure_from, limits, work, meta.get("recompute", "none"))  # runs before --recompute: none
    print(format_table(rows))
    load, load_after = meta["load_before"], meta["load_after"]
    print(f"medians of steps {measure_from}-{len(work)}; load average before {load}, after {load_after}")
    write_csv(out / "vs_trl.csv", [{**r, **meta} for r in rows], SUMMARY_COLUMNS + list(meta))
    print(f"CSV: {out / 'vs_trl.csv'} (summary), {out / 'vs_trl_steps.csv'} (every step)")


def main(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from p2o.experiment.cpu_limits import CPULimits, measure_limits
    from p2o.models import resolve_model_dir

    if args.report_only:
        out = Path(args.out)
        sides, meta = load_run(out)
        steps = max(r["step"] for s in sides for r in s.steps) + 1
        if not 1 <= args.measure_from <= steps:
            print(f"p2o bench vs-trl: --measure-from {args.measure_from} must lie in 1..{steps} (the run's steps)",
                  file=sys.stderr)
            return 2
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(meta.get("model", args.model)))
        with tempfile.TemporaryDirectory() as tmp:  # the run's problems again, to count their prompt tokens
            prompt_lens = write_problems(Path(tmp) / "problems.jsonl", tokenizer,
                                         int(meta.get("num_problems", args.num_problems)),
                                         int(meta.get("seed", args.seed)))
        limits = CPULimits(meta["gemm_gflops"] * 1e9, meta["mem_gbps"] * 1e9, meta["threads"])
        report(out, sides, limits, work_by_step(prompt_lens, meta["params"], steps), args.measure_from, meta)
        return 0

    names = [n.strip() for n in args.sides.split(",") if n.strip()]
    if not 1 <= args.measure_from <= args.steps:
        print(f"p2o bench vs-trl: --measure-from {args.measure_from} must lie in 1..--steps ({args.steps})",
              file=sys.stderr)
        return 2
    if args.num_problems < args.steps * PROMPTS_PER_STEP:
        print(f"p2o bench vs-trl: --num-problems {args.num_problems} < {args.steps} steps x {PROMPTS_PER_STEP}",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model_dir(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    problems = out / "problems.jsonl"
    prompt_lens = write_problems(problems, tokenizer, args.num_problems, args.seed)
    params = count_params(model_dir)

    limits = measure_limits()
    print(f"CPU limits: fp32 GEMM {limits.gemm_flops / 1e9:.1f} GFLOP/s, memory bandwidth "
          f"{limits.mem_bytes_per_s / 1e9:.1f} GB/s ({limits.threads} threads); model {params / 1e6:.1f} M params")
    trl_py = ensure_trl_venv(Path(args.trl_venv).expanduser(), args.trl_version, not args.no_install) \
        if "trl" in names else None

    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    sides = side_commands(names, problems, model_dir, args.model, out, args.steps, trl_py, args.ours_override,
                          recompute=args.recompute == "full", malloc=args.malloc)
    load = os.getloadavg()
    try:
        with RSSSampler(sides):
            run_lockstep(sides, args.steps, args.timeout_s, env, out / "vs_trl_steps.csv")
    finally:
        for s in sides:
            s.stop()
    load_after = os.getloadavg()
    meta = {"gemm_gflops": limits.gemm_flops / 1e9, "mem_gbps": limits.mem_bytes_per_s / 1e9,
            "threads": limits.threads, "params": params,
            "load_before": [round(x, 2) for x in load], "load_after": [round(x, 2) for x in load_after],
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "trl_version": args.trl_version,
            "recompute": args.recompute, "malloc": args.malloc, "model": args.model,
            "num_problems": args.num_problems, "seed": args.seed}
    report(out, sides, limits, work_by_step(prompt_lens, params, args.steps), args.measure_from, meta)
    return 0
