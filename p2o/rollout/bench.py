"""`p2o bench rollout`: the HF engine against vLLM on the demo workload (`--engines hf,vllm`), or HF engine tokens/s
by batch size and gateway latency / tokens/s under concurrent clients (the default).

Engine comparison (`--engines hf,vllm [--config configs/demo_cpu.yaml]`): the run config's workload, i.e. its
model and dtype, one step's rollouts (`rollout.prompts_per_step` training problems, chat-formatted with the run's
prompt, `rollout.n` samples each at the rollout temperature / top-p / top-k, `rollout.max_new_tokens`), each engine
in a fresh process of its own (vLLM binds threads and patches torch; RSS is per engine) with `--threads` torch /
OpenMP threads:
- load_s: building the engine (imports included);
- sampled / greedy tokens/s: generated tokens / wall time of one `generate` over the step's requests (greedy: the
  same prompts, n=1, temperature 0), after one warm-up call, median of `--repeats`;
- ttft_s: time to first token of that batch (`max_new_tokens=1`), and of one request alone (x=1);
- weight_sync_s: sleep -> load the model's full weights from a stream of `rollout.weight_bucket_bytes` buckets ->
  wake, median of `--repeats` (what every training step pays);
- peak_rss_mb: the engine process's peak resident memory (ru_maxrss) at the end.
CSV mode = the engine (hf | vllm), x = sequences per call (1 for the single-request TTFT).

Sweep protocol (fixed, so numbers are comparable across machines):
- prompts: chat-formatted synthetic arithmetic questions (`p2o.data` generator, seed 0, the default user
  template), one distinct prompt per sequence;
- engine: `generate` on `batch` requests (n=1, temperature 1, seed = request index, `max_new_tokens`),
  one warm-up call, then `repeats` timed calls; tokens/s = generated tokens / wall time, median reported;
- baseline (`--baseline`): transformers' `model.generate` on the same left-padded batch, sampling at
  temperature 1 for exactly `max_new_tokens` tokens, same repeats;
- gateway: `clients` concurrent `openai.AsyncOpenAI` clients, each sending `requests_per_client` chat
  completions one after another to a gateway on 127.0.0.1 whose batches hold up to max(batches) sequences;
  latency p50 / p99 per request and aggregate generated tokens/s.

CSV rows: bench, model, mode, metric, x, value, device, commit, timestamp (appended to `--out`).
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import statistics
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch


@dataclass
class Row:
    model: str
    mode: str
    metric: str
    x: int
    value: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engines", default="", help="compare these engines on the run config's workload "
                        "(e.g. hf,vllm); empty: the HF engine sweep below")
    parser.add_argument("--config", default="configs/demo_cpu.yaml", help="run config of the engine comparison")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override of the engine comparison (repeatable)")
    parser.add_argument("--models", default="tiny-qwen3,smollm2-135m", help="comma-separated model.path values")
    parser.add_argument("--batches", default="1,16,64", help="engine batch sizes")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per sequence")
    parser.add_argument("--repeats", type=int, default=3, help="timed engine calls per batch size")
    parser.add_argument("--clients", type=int, default=64, help="concurrent gateway clients (0: skip the gateway)")
    parser.add_argument("--requests-per-client", type=int, default=2, help="sequential requests per client")
    parser.add_argument("--baseline", action="store_true",
                        help="also time transformers' model.generate on the same batches (mode 'hf-generate')")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--cache-dir", default="~/.cache/p2o", help="where embedded models are cached")
    parser.add_argument("--out", default="runs/bench/rollout.csv", help="CSV file to append to")


def bench_prompts(tokenizer: Any, count: int) -> list[list[int]]:
    """`count` distinct chat-formatted arithmetic prompts (token ids)."""
    from p2o import prompts
    from p2o.data.arithmetic import generate

    problems = generate(max(count, 1), levels=[1, 2, 3], seed=0)
    return [prompts.encode(tokenizer, prompts.messages(p.question)) for p in problems[:count]]


def engine_rows(name: str, engine: Any, batches: list[int], max_new_tokens: int, repeats: int) -> list[Row]:
    from p2o.rollout.engine import GenerationRequest, SamplingParams

    rows = []
    ids = bench_prompts(engine.tokenizer, max(batches))
    for batch in batches:
        reqs = [GenerationRequest(ids[i], SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens, seed=i))
                for i in range(batch)]
        engine.max_batch_size = batch
        engine.generate(reqs[:1])  # warm-up
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            gens = engine.generate(reqs)
            elapsed = time.perf_counter() - start
            rates.append(sum(len(g[0].response_ids) for g in gens) / elapsed)
        rows.append(Row(name, "engine", "tokens_per_s", batch, statistics.median(rates)))
    return rows


def generate_baseline_rows(name: str, engine: Any, batches: list[int], max_new_tokens: int, repeats: int) -> list[Row]:
    """transformers' `generate` (sampling, left padding, exactly max_new_tokens) on the engine's model."""
    model, pad = engine.model, engine.pad_id
    device = next(model.parameters()).device
    ids = bench_prompts(engine.tokenizer, max(batches))
    rows = []
    for batch in batches:
        width = max(len(p) for p in ids[:batch])
        x = torch.tensor([[pad] * (width - len(p)) + p for p in ids[:batch]], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ids[:batch]], device=device)
        kwargs = dict(attention_mask=mask, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                      do_sample=True, temperature=1.0, top_k=0, pad_token_id=pad)
        with torch.inference_mode():
            model.generate(x[:1], attention_mask=mask[:1], max_new_tokens=2, pad_token_id=pad)  # warm-up
            rates = []
            for _ in range(repeats):
                start = time.perf_counter()
                model.generate(x, **kwargs)
                rates.append(batch * max_new_tokens / (time.perf_counter() - start))
        rows.append(Row(name, "hf-generate", "tokens_per_s", batch, statistics.median(rates)))
    return rows


async def _clients(url: str, msgs: list[list[dict]], clients: int, per_client: int,
                   max_new_tokens: int) -> tuple[list[float], int, float]:
    import httpx
    import openai

    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=clients + 8), timeout=600)
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="bench", http_client=http, max_retries=0)
    latencies: list[float] = []
    tokens = 0

    async def one(c: int) -> None:
        nonlocal tokens
        for r in range(per_client):
            start = time.perf_counter()
            resp = await client.chat.completions.create(model="bench", messages=msgs[(c * per_client + r) % len(msgs)],
                                                        max_tokens=max_new_tokens, temperature=1.0, seed=c * 1000 + r)
            latencies.append(time.perf_counter() - start)
            tokens += resp.usage.completion_tokens

    start = time.perf_counter()
    await asyncio.gather(*(one(c) for c in range(clients)))
    wall = time.perf_counter() - start
    await client.close()
    return latencies, tokens, wall


def gateway_rows(name: str, engine: Any, batch: int, clients: int, per_client: int, max_new_tokens: int) -> list[Row]:
    from p2o.data.arithmetic import generate
    from p2o.prompts import messages
    from p2o.rollout.gateway import Gateway

    engine.max_batch_size = batch
    msgs = [messages(p.question) for p in generate(clients * per_client, levels=[1, 2, 3], seed=1)]
    gw = Gateway(engine, engine.tokenizer, model_name="bench", max_batch_sequences=batch,
                 max_queue=clients * per_client + 8).start()
    try:
        latencies, tokens, wall = asyncio.run(_clients(gw.url, msgs, clients, per_client, max_new_tokens))
    finally:
        gw.stop()
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return [Row(name, "gateway", "latency_p50_s", clients, q[49]), Row(name, "gateway", "latency_p99_s", clients, q[98]),
            Row(name, "gateway", "tokens_per_s", clients, tokens / wall)]


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    import os
    return f"cpu x{torch.get_num_threads()} threads ({os.cpu_count()} cores)"


# ---------------------------------------------------------------------------------------------- engine comparison
def _median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_engine(engine_name: str, config: str | None, overrides: list[str], repeats: int,
                   threads: int) -> list[Row]:
    """The comparison protocol (module docstring) for one engine, in the calling process (run it in a fresh one)."""
    import os
    import resource
    from contextlib import nullcontext

    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
    from megatron_bridge.launch import single_rank_world
    from p2o import prompts
    from p2o.config import load_config
    from p2o.data import load_train_problems
    from p2o.models import resolve_model_dir
    from p2o.rollout.engine import GenerationRequest, SamplingParams
    from p2o.rollout.factory import build_engine
    from p2o.rollout.weights import iter_buckets

    cfg = load_config(config, [*overrides, f"rollout.engine={engine_name}"])
    r = cfg.rollout
    model_dir = resolve_model_dir(cfg.model.path, cfg.model.cache_dir, cfg.model.init_seed)
    model_name = cfg.model.path
    needs_world = engine_name == "vllm" and "RANK" not in os.environ
    with single_rank_world() if needs_world else nullcontext():
        start = time.perf_counter()
        engine = build_engine(r, cfg.model, model_dir)
        load_s = time.perf_counter() - start
        tok = engine.tokenizer
        problems = load_train_problems(cfg.data)[:r.prompts_per_step]
        ids = [prompts.encode(tok, prompts.messages(p.question, None, cfg.prompt.user_template, cfg.prompt.system),
                              cfg.model.thinking) for p in problems]
        sampled = [GenerationRequest(x, SamplingParams(n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                                                       max_new_tokens=r.max_new_tokens, seed=i))
                   for i, x in enumerate(ids)]
        greedy = [GenerationRequest(x, SamplingParams(temperature=0.0, max_new_tokens=r.max_new_tokens))
                  for x in ids for _ in range(r.n)]
        first = [GenerationRequest(q.prompt_ids, SamplingParams(temperature=0.0, max_new_tokens=1)) for q in greedy]
        seqs = len(greedy)
        rows = [Row(model_name, engine_name, "load_s", seqs, load_s)]
        for metric, reqs in (("sampled_tokens_per_s", sampled), ("greedy_tokens_per_s", greedy)):
            engine.generate(reqs)  # warm-up
            rates = []
            for _ in range(repeats):
                start = time.perf_counter()
                gens = engine.generate(reqs)
                rates.append(sum(len(g.response_ids) for per in gens for g in per) / (time.perf_counter() - start))
            rows.append(Row(model_name, engine_name, metric, seqs, statistics.median(rates)))
        rows.append(Row(model_name, engine_name, "ttft_s", seqs, _median_s(lambda: engine.generate(first), repeats)))
        rows.append(Row(model_name, engine_name, "ttft_s", 1, _median_s(lambda: engine.generate(first[:1]), repeats)))
        from transformers import AutoModelForCausalLM

        new = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        weights = [(n, p.detach()) for n, p in new.named_parameters()]
        versions = iter(range(1, repeats + 1))

        def sync() -> None:
            engine.sleep()
            engine.load_weights(iter_buckets(weights, r.weight_bucket_bytes), next(versions))
            engine.wake_up()

        rows.append(Row(model_name, engine_name, "weight_sync_s", seqs, _median_s(sync, repeats)))
        rows.append(Row(model_name, engine_name, "peak_rss_mb", seqs,
                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    return rows


def compare_engines(args: argparse.Namespace) -> list[Row]:
    """`measure_engine` for each of `--engines`, one after the other, each in a fresh spawned process."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    rows: list[Row] = []
    for name in [e for e in args.engines.split(",") if e]:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows += pool.submit(measure_engine, name, args.config, list(args.set), args.repeats, args.threads).result()
    return rows


def print_comparison(rows: list[Row]) -> None:
    engines = list(dict.fromkeys(r.mode for r in rows))
    keys = list(dict.fromkeys((r.metric, r.x) for r in rows))
    value = {(r.mode, r.metric, r.x): r.value for r in rows}
    print(f"{'metric':22s} {'x':>4s} " + " ".join(f"{e:>10s}" for e in engines))
    for metric, x in keys:
        print(f"{metric:22s} {x:4d} " + " ".join(f"{value.get((e, metric, x), float('nan')):10.3f}" for e in engines))


# ---------------------------------------------------------------------------------------------- entry point
def main(args: argparse.Namespace) -> int:
    from p2o.models import resolve_model_dir
    from p2o.rollout.factory import resolve_device
    from p2o.rollout.hf_engine import HFEngine

    device = resolve_device(args.device)
    rows: list[Row] = []
    if args.engines:
        rows = compare_engines(args)
        print_comparison(rows)
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        batches = [int(b) for b in args.batches.split(",") if b]
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
        for name in [m for m in args.models.split(",") if m]:
            engine = HFEngine.from_pretrained(resolve_model_dir(name, args.cache_dir), device=device, dtype=dtype)
            rows += engine_rows(name, engine, batches, args.max_new_tokens, args.repeats)
            if args.baseline:
                rows += generate_baseline_rows(name, engine, batches, args.max_new_tokens, args.repeats)
            if args.clients > 0:
                rows += gateway_rows(name, engine, max(batches), args.clients, args.requests_per_client,
                                     args.max_new_tokens)
        print(f"{'model':14s} {'mode':11s} {'metric':14s} {'x':>5s} {'value':>10s}")
        for r in rows:
            print(f"{r.model:14s} {r.mode:11s} {r.metric:14s} {r.x:5d} {r.value:10.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    stamp, commit, dev = datetime.now(UTC).isoformat(timespec="seconds"), _commit(), _device_name(device)
    with out.open("a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["bench", "model", "mode", "metric", "x", "value", "device", "commit", "timestamp"])
        for r in rows:
            w.writerow(["rollout", r.model, r.mode, r.metric, r.x, f"{r.value:.4f}", dev, commit, stamp])
    print(f"wrote {len(rows)} rows to {out}")
    return 0
