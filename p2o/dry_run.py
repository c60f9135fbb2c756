"""The dry run: every validation, the derived values, and the plan of a run, without loading a model.

`p2o train --config X --dry-run` and `p2o config check --config X` load the config exactly as a run does
(sections, cross-section rules, `p2o.limits`), print what the run would build and how big each request and
budget is, and exit 0 (ok) or 2 (bad config, the error naming the keys). Nothing heavy is imported: no
torch, no model, no process group.
"""
from __future__ import annotations

import sys

from p2o.config import ConfigError, RunConfig, load_unresolved
from p2o.limits import RunLimits, resolve_limits


def plan_lines(cfg: RunConfig, limits: RunLimits) -> list[str]:
    """The run's components, limits and budgets, one line each (the config is already resolved)."""
    from p2o.gepa.core.search import dev_count, round_bounds

    r, g, p, refl, d = cfg.rollout, cfg.gepa, cfg.p2o, cfg.reflection, cfg.data
    nproc = cfg.train.nproc or cfg.parallel.tp * cfg.parallel.pp
    positions = (f"max_position_embeddings {limits.model_max_len}" if limits.model_max_len
                 else "config.json not readable here")
    lines = ["components",
             f"  model            {cfg.model.path} ({cfg.model.dtype}, thinking {cfg.model.thinking}; {positions})",
             f"  layout           TP {cfg.parallel.tp} x PP {cfg.parallel.pp} (VPP {cfg.parallel.vpp}), "
             f"{nproc} process(es), DP = processes / (TP x PP)",
             f"  data             {d.source}" + (f", held-out {d.eval_source}" if d.eval_source else ", no held-out set"),
             f"  rollouts         {r.engine} engine, {r.prompts_per_step} prompts x K={r.n} per step, "
             f"T={r.temperature}, top_p={r.top_p}, <= {r.max_prompt_tokens} prompt + {r.max_new_tokens} response tokens",
             f"  update           GRPO: adv_norm {cfg.grpo.adv_norm}, {cfg.grpo.loss_agg}, clip "
             f"{cfg.grpo.clip_low}/{cfg.grpo.clip_high}, dual clip {cfg.grpo.dual_clip}, kl {cfg.grpo.kl_coef}; "
             f"{cfg.grpo.ppo_minibatches} minibatch(es) x {cfg.grpo.ppo_epochs} epoch(s)"]
    if p.enabled:
        service = g.service_url or "a local child process on 127.0.0.1"
        from p2o.limits import describe_placement

        reflector = (f"self: the frozen initial model, {describe_placement(cfg)}" if refl.mode == "self"
                     else f"teacher: {refl.model} at {refl.base_url}")
        lines += [f"  P2O              hard: fewer than tau={p.tau} of K correct (on {p.hard_on} rollouts); "
                  f"distillation {p.distill} [{p.ratio_low}, {p.ratio_high}]; GEPA {p.gepa_mode}",
                  f"  reflection       {reflector}; T={refl.temperature}, <= {refl.max_tokens} tokens",
                  f"  GEPA service     {service}"]
    else:
        lines.append("  P2O              off: plain GRPO through the same loop")
    pg = limits.policy_gateway
    lines += ["limits",
              f"  policy gateway   prompts <= {pg.max_prompt_tokens} tokens (rollout.max_prompt_tokens), "
              f"max_tokens <= {pg.max_tokens} ({limits.policy_max_tokens_from}), n <= {pg.max_n}"]
    if p.enabled:
        lines.append(f"  GEPA scoring     max_tokens {g.eval_max_tokens}, n {g.eval_n}, T={g.eval_temperature}, "
                     f"{g.eval_concurrency} in flight (queue {r.gateway_max_queue})")
        rg = limits.reflection_gateway
        if rg is not None:
            lines.append(f"  reflection gw    prompts <= {rg.max_prompt_tokens} tokens (reflection.context_tokens "
                         f"{limits.reflection_context_tokens} [{limits.reflection_context_from}] - "
                         f"reflection.max_tokens {refl.max_tokens}), max_tokens <= {rg.max_tokens}")
        lines.append(f"  meta-prompt      fitted into {limits.reflection_prompt_budget} tokens")
    if limits.model_max_len:
        lines.append(f"  model positions  {limits.model_max_len}: rollouts {r.max_prompt_tokens + r.max_new_tokens}, "
                     f"GEPA scoring {r.max_prompt_tokens + pg.max_tokens} at most")
    lines += [f"  note             {n}" for n in limits.notes]
    steps = (f"{cfg.train.steps_per_epoch} steps" if cfg.train.steps_per_epoch
             else f"|data| // {r.prompts_per_step} steps")
    lines += ["budgets", f"  training         {cfg.train.epochs} epoch(s) of {steps}, {r.n} rollouts per prompt"]
    if p.enabled:
        rounds = max(0, cfg.train.epochs - 1)
        lines.append(f"  GEPA rounds      at most {rounds} (at each epoch end but the last, with >= p2o.min_hard = "
                     f"{p.min_hard} hard samples)")
        budget_rule = ("auto: 23 x |dev| + 4140 metric calls, per round" if g.budget == "auto"
                       else f"fixed: {g.budget_metric_calls} metric calls per round")
        lines.append(f"  GEPA budget      {budget_rule} ({g.accounting} accounting)")
        sizes = sorted({dev_count(p.min_hard, g.dev_size), g.dev_size})
        for n_dev in sizes:
            b = round_bounds(g, n_dev)
            when = "full dev set" if n_dev == g.dev_size else f"smallest round: {p.min_hard} hard samples"
            lines.append(f"  GEPA per round   dev {n_dev} ({when}): budget {b.budget}; at most {b.max_metric_calls} "
                         f"scoring requests, {b.max_reflection_calls} reflection calls")
    return lines


def dry_run(config: str | None, overrides: list[str], prog: str = "p2o train") -> int:
    """Validate, resolve and print the plan; 0 when the config is good, 2 (with the error) when it is not."""
    try:
        cfg = load_unresolved(config, overrides)
        limits = resolve_limits(cfg)
        limits.apply(cfg)
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    print(f"{prog}: configuration OK ({config or 'defaults'}{', ' + ' '.join(overrides) if overrides else ''})")
    print("\n".join(plan_lines(cfg, limits)))
    return 0
