"""The objects a training run needs, built once from the config (`build_runtime`) and closed at the end.

Rank 0 owns the rollout side: the scheduler and the OpenAI-compatible gateway in front of the policy's engine
(which the GEPA service uses to score candidates with the current policy), the frozen initial model behind a
second gateway for Self-Ref reflection (`p2o.rollout.reflection_server`), the verifier, the GEPA client (and, when
`gepa.service_url` is empty, the GEPA service as a child process on 127.0.0.1), and the metrics sinks.
Every rank holds its part of the Megatron policy. Small Python objects move between ranks with
`broadcast` (torch.distributed object broadcast over the default group).

Engines: `rollout.engine=hf` is one engine on rank 0. `rollout.engine=vllm` is an engine on *every* rank (vLLM's
`external_launcher` needs every rank to build it together), in replicas of `rollout.vllm_tp` ranks; rank 0's
scheduler drives them all through `p2o.rollout.phases`. Every method that generates (`rollouts`,
`evaluate_heldout`, a blocking `collect_gepa`) is then a *generation phase* that every rank calls: rank 0 serves
the scheduler, the others `follow` until rank 0 ends the phase. With one engine (hf, or a single rank) the other
ranks return at once. Every rank loads the exported weights into its own engine (`sync_weights`).
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from p2o.config import RunConfig, to_dict, to_yaml
from p2o.data import load_eval_problems, load_train_problems
from p2o.data.problem import Problem
from p2o.limits import check_prompt_lengths, resolve_limits
from p2o.models import resolve_model_dir
from p2o.train.rows import plan_requests, to_rows

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    cfg: RunConfig
    run_dir: Path
    rank: int
    world_size: int
    policy: Any
    tokenizer: Any
    model_dir: Path
    train_problems: list[Problem]
    eval_problems: list[Problem]
    reference: Any = None
    """The frozen initial policy when grpo.kl_coef > 0 (KL reference; rebuilt from model.path on resume)."""
    gateway: Any = None
    reflection_gateway: Any = None
    verifier: Any = None
    gepa_client: Any = None
    gepa_process: subprocess.Popen | None = None
    metrics: Any = None
    gpu: Any = None
    engine: Any = None
    """This rank's policy engine (rank 0: what the scheduler drives; others: a vLLM engine or None)."""
    phases: Any = None
    """`p2o.rollout.phases.PhaseGroup` when every rank holds an engine and there are several ranks, else None."""
    _closers: list = field(default_factory=list)

    # ------------------------------------------------------------------ collectives
    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.world_size == 1:
            return obj
        box = [obj if self.is_rank0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def any_rank(self, flag: bool) -> bool:
        if self.world_size == 1:
            return flag
        t = torch.tensor([1 if flag else 0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    # ------------------------------------------------------------------ rollout side (rank 0)
    @property
    def scheduler(self):
        return self.gateway.scheduler

    def follow(self) -> None:
        """A non-zero rank's side of a generation phase: its engine serves rank 0's calls until the phase ends
        (returns at once when rank 0 holds the only engine)."""
        if self.phases is not None and not self.is_rank0:
            from p2o.rollout.phases import follow

            follow(self.engine, self.phases)

    @contextmanager
    def _phase(self):
        """Rank 0's side of a generation phase: the body resumes and pauses the scheduler; at the end the
        followers are released (also when the body raises, so no rank waits forever)."""
        try:
            yield
        finally:
            if self.phases is not None:
                self.scheduler.pause()
                self.engine.end_phase()

    def rollouts(self, problems: list[Problem], assignment: dict[str, list[str]], step: int):
        """A generation phase (every rank): wake the engine, serve this step's rollouts (batched with queued
        requests), sleep. Rank 0 returns the rows, the others None."""
        if not self.is_rank0:
            self.follow()
            return None
        with self._phase():
            planned = plan_requests(self.cfg, self.tokenizer, problems, assignment, step)
            futures = self.scheduler.submit([p.request for p in planned], priority="training")
            self.scheduler.resume()
            generations = self._collect(futures, f"step {step} generate")
            self.scheduler.pause()
        return to_rows(planned, generations)

    def _collect(self, futures, desc: str) -> list:
        """Wait for generation futures with a progress bar (requests done / total, with ETA)."""
        from concurrent.futures import wait

        from p2o.telemetry.progress import progress

        with progress(desc, total=len(futures), enabled=self.cfg.logging.progress, unit="req") as bar:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=1.0)
                bar.update(len(done))
        return [f.result() for f in futures]

    def save_rollouts(self, rows, step: int) -> None:
        """rollouts/step_N.jsonl: problem, template, reward, verdict, text of every rollout (rank 0)."""
        if not (self.is_rank0 and self.cfg.logging.save_rollouts):
            return
        import json

        d = self.run_dir / "rollouts"
        d.mkdir(exist_ok=True)
        keys = ("problem_id", "group", "template", "reward", "verdict_reason", "advantage", "finish_reason",
                "policy_version", "text")
        tmp = d / f"step_{step:06d}.jsonl.tmp"
        tmp.write_text("".join(json.dumps({k: getattr(r, k) for k in keys}, ensure_ascii=False) + "\n" for r in rows))
        tmp.replace(d / f"step_{step:06d}.jsonl")

    def verify(self, pairs: list[tuple[str, str]]):
        return self.verifier.score_many(pairs)

    def sync_weights(self, version: int) -> None:
        """Collective: every rank streams its weights; every rank that holds an engine loads them at `version`
        (rank 0 through the scheduler, between batches).

        With `rollout.share_weights` and the HF engine, the stream hands out views of the policy's parameters
        where layouts allow and the engine adopts them instead of keeping its own copy; it refuses to generate
        if the policy changes them before the next sync (`p2o.rollout.hf_engine`, docs/rollout.md)."""
        stream = self.policy.export_weights(self.cfg.rollout.weight_bucket_bytes)
        if self.cfg.rollout.share_weights and self.cfg.rollout.engine == "hf" and hasattr(stream, "views"):
            stream.views = True
        if self.is_rank0:
            self.scheduler.update_weights(stream, version)
        elif self.engine is not None:
            self.engine.load_weights(stream, version)
        else:
            for _ in stream:
                pass

    def evaluate_heldout(self, epoch: int | None = None) -> dict[str, float]:
        """Held-out accuracy without templates: greedy, and avg@4 at the rollout temperature (`evaluate_plain`)."""
        return self.evaluate_plain(self.eval_problems, "heldout", epoch) if self.eval_problems else {}

    def evaluate_plain(self, problems: list[Problem], name: str, epoch: int | None = None,
                       samples: int = 4) -> dict[str, float]:
        """Accuracy on `problems` with the plain prompt x (no template), served by the scheduler at evaluation
        priority: one greedy response and `samples` at the rollout temperature per problem. A generation phase
        (every rank calls it with the same problems; rank 0 returns the metrics, the others {}).

        Returns `{name}_greedy` and `{name}_avg{samples}` (fractions correct) and `{name}_size` (problems); with
        an `epoch`, also writes the per-problem results to evals/{name}_epoch{epoch:03d}.jsonl, one
        {"id", "greedy": 0|1, "correct": correct samples, "n": samples} line per problem."""
        if not problems:
            return {}
        if not self.is_rank0:
            self.follow()
            return {}
        from p2o import prompts
        from p2o.rollout.engine import GenerationRequest, SamplingParams

        cfg = self.cfg
        ids = [prompts.encode(self.tokenizer, prompts.messages(p.question, None, cfg.prompt.user_template,
                                                               cfg.prompt.system), cfg.model.thinking)
               for p in problems]
        greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=cfg.rollout.max_new_tokens)
        sampled = SamplingParams(n=samples, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                 top_k=cfg.rollout.top_k, max_new_tokens=cfg.rollout.max_new_tokens,
                                 seed=cfg.rollout.seed)
        reqs = [GenerationRequest(i, greedy, f"{name}-g{j}") for j, i in enumerate(ids)]
        reqs += [GenerationRequest(i, sampled, f"{name}-s{j}") for j, i in enumerate(ids)]
        with self._phase():
            futures = self.scheduler.submit(reqs, priority="evaluation")
            self.scheduler.resume()
            gens = self._collect(futures, f"{name} eval")
            self.scheduler.pause()
        n = len(ids)
        pairs = [(gl[0].text, p.answer) for gl, p in zip(gens[:n], problems, strict=True)]
        pairs += [(g.text, p.answer) for gl, p in zip(gens[n:], problems, strict=True) for g in gl]
        verdicts = self.verify(pairs)
        per = [{"id": p.id, "greedy": int(verdicts[j].correct),
                "correct": sum(v.correct for v in verdicts[n + j * samples: n + (j + 1) * samples]), "n": samples}
               for j, p in enumerate(problems)]
        if epoch is not None:
            import json

            d = self.run_dir / "evals"
            d.mkdir(exist_ok=True)
            tmp = d / f"{name}_epoch{epoch:03d}.jsonl.tmp"
            tmp.write_text("".join(json.dumps(r) + "\n" for r in per))
            tmp.replace(d / f"{name}_epoch{epoch:03d}.jsonl")
        return {f"{name}_greedy": sum(r["greedy"] for r in per) / n,
                f"{name}_avg{samples}": sum(r["correct"] for r in per) / (samples * n), f"{name}_size": n}

    # ------------------------------------------------------------------ GEPA (rank 0)
    def submit_gepa(self, hard, epoch: int, policy_version: int) -> dict:
        from p2o.gepa.protocol import DEFAULT_LIMITS, FAILED_RESPONSE_TAIL_CHARS, GEPAJobSpec, job_section

        cfg = self.cfg
        samples = list(hard.samples.values())
        tails = {s.problem.id: [r[-FAILED_RESPONSE_TAIL_CHARS:] for r in s.failed_responses]
                 [:DEFAULT_LIMITS.max_responses_per_problem] for s in samples}
        spec = GEPAJobSpec(
            problems=[s.problem for s in samples], failed_responses=tails,
            policy_version=policy_version, policy_url=advertised_url(self.gateway.url) + "/v1", policy_model="policy",
            reflection=self._reflection_settings(), gepa=job_section("gepa", cfg.gepa),
            reward=job_section("reward", cfg.reward), k=cfg.rollout.n,
            user_template=cfg.prompt.user_template, system=cfg.prompt.system, thinking=cfg.model.thinking,
            idempotency_key=f"{self.run_dir.resolve()}::epoch{epoch}",
            same_template_in_group=cfg.p2o.same_template_in_group,
            leave_one_untemplated=cfg.p2o.leave_one_untemplated,
        )
        job_id = self.gepa_client.submit(spec)
        log.info("epoch %d: GEPA job %s submitted with %d hard samples (policy version %d)", epoch, job_id,
                 len(samples), policy_version)
        return {"job_id": job_id, "epoch": epoch, "policy_version": policy_version,
                "hard_ids": [s.problem.id for s in samples], "submitted_at": time.time()}

    def _reflection_settings(self) -> dict:
        from p2o.gepa.protocol import job_section

        r = job_section("reflection", self.cfg.reflection)  # the service's endpoint table chooses keys
        if self.reflection_gateway is not None:  # Self-Ref served by this run
            r["base_url"] = advertised_url(self.reflection_gateway.url) + "/v1"
            r["model"] = "reflection"
        return r

    def gepa_endpoints(self) -> list[str]:
        """`p2o gepa-serve` flags registering this run's endpoints and the variables holding their keys."""
        cfg, args = self.cfg, []
        gateway_key = cfg.rollout.gateway_token_env if os.environ.get(cfg.rollout.gateway_token_env) else ""
        named = [("policy", advertised_url(self.gateway.url) + "/v1", gateway_key)]
        if self.reflection_gateway is not None:
            named.append(("reflection", advertised_url(self.reflection_gateway.url) + "/v1", gateway_key))
        elif cfg.reflection.base_url:
            key = cfg.reflection.api_key_env if os.environ.get(cfg.reflection.api_key_env) else ""
            named.append(("reflection", cfg.reflection.base_url, key))
        for name, url, key in named:
            args += ["--endpoint", f"{name}={url}"] + (["--endpoint-key-env", f"{name}={key}"] if key else [])
        return args

    def collect_gepa(self, job: dict, block: bool) -> dict | None:
        """The finished job's outcome {"assignment", "metrics"}, or None while it runs (block=False). Blocking,
        it is a generation phase (every rank; the others return None): the engines serve GEPA's candidate
        evaluations while rank 0 waits."""
        if not self.is_rank0:
            if block:
                self.follow()
            return None
        client = self.gepa_client
        if block:
            from p2o.telemetry.progress import progress

            with self._phase():
                self.scheduler.resume()
                with progress(f"GEPA {job['job_id']}", total=None, enabled=self.cfg.logging.progress,
                              unit="call") as bar:
                    def on_progress(st: dict) -> None:
                        bar.total = st.get("budget_total") or bar.total
                        bar.n = st.get("budget_used") or 0
                        bar.set_postfix_str(_progress_line(st), refresh=True)
                        log.debug("GEPA %s: %s", job["job_id"], _progress_line(st))

                    status = client.wait(job["job_id"], timeout_s=float("inf"), poll_s=self.cfg.gepa.poll_interval_s,
                                         on_progress=on_progress)
                log.info("GEPA %s: %s", job["job_id"], _progress_line(status))
                self.scheduler.pause()
        else:
            status = client.status(job["job_id"])
        state = status.get("state")
        if state not in ("done", "failed", "cancelled"):
            return None
        metrics = {k: status.get(k) for k in ("iteration", "budget_used", "budget_total", "pool_size", "best_dev_score")}
        metrics["gepa_wall_s"] = time.time() - job.get("submitted_at", time.time())
        if state != "done":
            from p2o.gepa.evaluate import is_refusal

            if state == "failed" and is_refusal(status.get("error") or ""):  # every later round would fail alike
                raise RuntimeError(f"GEPA job {job['job_id']} failed on a configuration error (p2o train --dry-run "
                                   f"prints the limits): {status.get('error')}")
            log.warning("GEPA job %s ended %s: %s; no templates from it", job["job_id"], state, status.get("error"))
            return {"assignment": {}, "metrics": {**metrics, "failed": 1}}
        result = client.result(job["job_id"])
        assignment = {pid: list(z) for pid, z in result.assignment.items() if z}
        metrics["covered_templates"] = len({t for z in assignment.values() for t in z if t})
        return {"assignment": assignment, "metrics": metrics}

    # ------------------------------------------------------------------ metrics
    def log_metrics(self, metrics: dict, step: int, kind: str = "step") -> None:
        if self.is_rank0:
            self.metrics.log(metrics, step, kind)
            shown = {k: metrics[k] for k in ("reward_mean", "hard_count", "templated_share", "mask_rate", "loss",
                                              "time_step_s", "heldout_greedy", "pool_size", "assigned")
                     if isinstance(metrics.get(k), (int, float))}
            where = f"epoch {metrics['epoch']}" if kind != "step" and "epoch" in metrics else f"{kind} {step}"
            log.info("%s: %s", where, " ".join(f"{k}={v:.4g}" for k, v in shown.items()))

    def truncate_metrics(self, step: int, size_bytes: int = -1) -> None:
        """Cut metrics.jsonl back to a checkpoint (its recorded size, else its step); see telemetry.metrics."""
        if self.is_rank0:
            self.metrics.truncate(step, size_bytes)  # TensorBoard purges the redone steps; the W&B run continues

    def progress(self, desc: str, total: int):
        """A progress bar for a phase, shown by rank 0 only (close it when the phase ends)."""
        from p2o.telemetry.progress import make_bar

        return make_bar(desc, total, self.is_rank0 and self.cfg.logging.progress)

    def gpu_metrics(self) -> dict[str, float]:
        return self.gpu.sample() if self.gpu is not None else {}

    def close(self) -> None:
        for fn in reversed(self._closers):
            try:
                fn()
            except Exception as e:  # closing must not mask the run's own error
                log.warning("while closing: %s", e)


# ---------------------------------------------------------------------------- construction
def _start_gepa_service(run_dir: Path, token_env: str, endpoint_args: list[str]) -> tuple[subprocess.Popen, str]:
    """`p2o gepa-serve` as a child process on 127.0.0.1 (with this run's endpoints); returns (process, base URL)."""
    d = run_dir / "gepa_service"
    d.mkdir(parents=True, exist_ok=True)
    endpoint = d / "endpoint"
    endpoint.unlink(missing_ok=True)
    log_file = open(d / "service.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "p2o.cli", "gepa-serve", "--host", "127.0.0.1", "--port", "0",
                             "--run-dir", str(d), "--endpoint-file", str(endpoint), "--token-env", token_env,
                             *endpoint_args],
                            stdout=log_file, stderr=subprocess.STDOUT, env=dict(os.environ))
    deadline = time.time() + 120
    while not endpoint.is_file() or not endpoint.read_text().strip():
        if proc.poll() is not None:
            raise RuntimeError(f"the GEPA service exited with code {proc.returncode}; see {d / 'service.log'}")
        if time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"the GEPA service did not start within 120 s; see {d / 'service.log'}")
        time.sleep(0.2)
    url = endpoint.read_text().strip()
    return proc, url if url.startswith("http") else f"http://{url}"


def advertised_url(url: str) -> str:
    """A URL other nodes can use: a wildcard bind address (0.0.0.0, ::) is replaced by this host's name."""
    for wildcard in ("0.0.0.0", "[::]", "::"):
        prefix = f"http://{wildcard}:"
        if url.startswith(prefix):
            return f"http://{socket.gethostname()}:" + url[len(prefix):]
    return url


def _progress_line(status: dict) -> str:
    keys = ("state", "iteration", "budget_used", "budget_total", "pool_size", "best_dev_score")
    return " ".join(f"{k}={status.get(k)}" for k in keys if status.get(k) is not None)


def build_runtime(cfg: RunConfig) -> Runtime:
    from transformers import AutoTokenizer

    from megatron_bridge.parallel import init_parallel
    from megatron_bridge.policy import MegatronPolicy, MegatronScorer

    layout = init_parallel(cfg.parallel, seed=cfg.train.seed)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(cfg.train.seed)
    run_dir = Path(cfg.logging.run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        model_dir = resolve_model_dir(cfg.model.path, cfg.model.cache_dir, cfg.model.init_seed)
    if world > 1:
        dist.barrier()
    model_dir = resolve_model_dir(cfg.model.path, cfg.model.cache_dir, cfg.model.init_seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_problems, eval_problems = load_train_problems(cfg.data), load_eval_problems(cfg.data)
    resolve_limits(cfg, model_dir)  # the limits again, against the resolved model, before anything heavy
    check_prompt_lengths(cfg, tokenizer, train_problems, "data.source")
    check_prompt_lengths(cfg, tokenizer, eval_problems, "data.eval_source")
    policy = MegatronPolicy.from_config(cfg, model_dir, layout)
    reference = MegatronScorer.frozen(cfg, model_dir, layout) if cfg.grpo.kl_coef > 0 else None
    rt = Runtime(cfg=cfg, run_dir=run_dir, rank=rank, world_size=world, policy=policy, tokenizer=tokenizer,
                 model_dir=model_dir, reference=reference, train_problems=train_problems,
                 eval_problems=eval_problems)
    rt._closers.append(lambda: policy.close() if hasattr(policy, "close") else None)
    if cfg.rollout.engine == "vllm":
        _build_engines(rt)
    if rank != 0:
        return rt
    _build_rank0(rt)
    return rt


def _build_engines(rt: Runtime) -> None:
    """Collective: every rank builds its vLLM engine (together, as vLLM's external launcher requires); with several
    ranks, rank 0's becomes a `CollectiveEngine` over all of them (`p2o.rollout.phases`)."""
    from p2o.rollout.factory import build_engine
    from p2o.rollout.phases import CollectiveEngine, PhaseGroup

    cfg = rt.cfg
    if rt.world_size % cfg.rollout.vllm_tp:
        raise ValueError(f"rollout.vllm_tp: got {cfg.rollout.vllm_tp}; expected a divisor of the number of ranks "
                         f"({rt.world_size})")
    rt.engine = build_engine(cfg.rollout, cfg.model, rt.model_dir)
    if rt.world_size > 1:
        rt.phases = PhaseGroup(cfg.rollout.vllm_tp)
        if rt.is_rank0:
            rt.engine = CollectiveEngine(rt.engine, rt.phases, seed=cfg.rollout.seed)
    log.info("rank %d: vLLM engine ready (%d replica(s) of vllm_tp=%d)", rt.rank, rt.world_size // cfg.rollout.vllm_tp,
             cfg.rollout.vllm_tp)


def _build_rank0(rt: Runtime) -> None:
    from p2o.reward import Verifier
    from p2o.rollout.factory import build_engine, build_gateway
    from p2o.telemetry.gpu import GPUSampler
    from p2o.telemetry.metrics import MetricsLogger

    cfg = rt.cfg
    (rt.run_dir / "config.yaml").write_text(to_yaml(cfg))
    rt.metrics = MetricsLogger(rt.run_dir, cfg.logging.tensorboard, cfg.logging.wandb, run_name=rt.run_dir.name,
                               config=to_dict(cfg))
    rt._closers.append(rt.metrics.close)
    rt.gpu = GPUSampler()
    rt.verifier = Verifier(cfg.reward)
    rt._closers.append(rt.verifier.close)
    limits = resolve_limits(cfg, rt.model_dir)
    if rt.engine is None:
        rt.engine = build_engine(cfg.rollout, cfg.model, rt.model_dir)
    rt.gateway = build_gateway(rt.engine, rt.tokenizer, cfg.rollout, "policy", cfg.model.thinking,
                               limits.policy_gateway).start()
    rt._closers.append(rt.gateway.stop)
    rt.gateway.scheduler.pause()
    if not cfg.p2o.enabled:
        return
    if cfg.reflection.mode == "self":  # Self-Ref: the frozen initial model, where reflection.server says
        from p2o.rollout.reflection_server import start_reflection_server

        rt.reflection_gateway = start_reflection_server(cfg, limits, rt.tokenizer, rt.model_dir, rt.run_dir)
        if rt.reflection_gateway is not None:  # None: external, at reflection.base_url
            rt._closers.append(rt.reflection_gateway.stop)
    from p2o.gepa.client import GEPAClient

    token = os.environ.get(cfg.gepa.token_env)
    if not token:
        token = secrets.token_hex(16)
        os.environ[cfg.gepa.token_env] = token  # the child service reads the same variable
    url = cfg.gepa.service_url
    if not url:
        rt.gepa_process, url = _start_gepa_service(rt.run_dir, cfg.gepa.token_env, rt.gepa_endpoints())
        rt._closers.append(lambda: (rt.gepa_process.terminate(), rt.gepa_process.wait(timeout=30)))
    rt.gepa_client = GEPAClient(url, token)
