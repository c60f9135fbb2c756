"""Rank function for the checkpoint-vs-Adam tests: save/load/resume with the Adam Megatron-Core picks."""
from __future__ import annotations

import torch
from mb_workers import make_cfg, pg_loss, save_on_rank0, synthetic_batch


def _params(policy) -> dict[str, torch.Tensor]:
    from megatron_bridge.checkpoint import unwrap

    return {f"{i}.{k}": v.detach().float().clone() for i, c in enumerate(policy.chunks)
            for k, v in unwrap(c).state_dict().items() if not k.endswith("_extra_state")}


def _inner_state(policy) -> dict:
    """Per-parameter state names and param-group steps of the torch-level optimizer(s)."""
    from megatron_bridge.checkpoint import torch_optimizers

    opts = torch_optimizers(policy.optimizer)
    return {"class": [type(o).__name__ for o in opts],
            "state_keys": sorted({k for o in opts for st in o.state.values() for k in st}),
            "group_steps": sorted({g.get("step") for o in opts for g in o.param_groups if g["params"]},
                                  key=str),
            "param_steps": sorted({float(st["step"]) for o in opts for st in o.state.values() if "step" in st})}


def resume_worker(model_dir: str, combos: list[tuple[str, str, bool]], ckpt_root: str, out_file: str) -> None:
    """Every (adam, dtype, distributed optimizer) combination in turn; rank 0 saves {combo: results}.

    adam: "torch" (Megatron's CPU fallback) or "fake_te" (FakeTEFusedAdam where Megatron builds TE's FusedAdam;
    installed for the rest of the process, so torch combinations must come first).
    """
    results = {}
    for adam, dtype, dist_opt in combos:
        if adam == "fake_te":
            from fake_fused_adam import install_as_megatron_adam

            install_as_megatron_adam()
        results[(adam, dtype, dist_opt)] = _resume(model_dir, dtype, dist_opt, f"{ckpt_root}/{adam}_{dtype}_{dist_opt}")
    save_on_rank0(results, out_file)


def _resume(model_dir: str, dtype: str, dist_opt: bool, ckpt_dir: str) -> dict:
    """ref:    3 optimizer steps from the HF weights
    fresh:  save before any step -> load into a new policy -> 3 steps        (must equal ref)
    middle: 1 step, save -> load into a new policy -> 2 steps                (must equal ref)
    """
    from megatron_bridge.policy import MegatronPolicy

    cfg = make_cfg(1, 1, dist_opt=dist_opt)
    cfg.model.dtype = dtype
    cfg.optim.weight_decay = 0.1  # decoupled decay: a wrong step count or a skipped step shows in the weights
    batch, inputs = synthetic_batch()
    norm = float(batch.num_response_tokens)

    def steps(policy, n):
        for _ in range(n):
            policy.train_step(batch, inputs, lambda lp, ti: pg_loss(lp, ti, norm))

    res: dict = {}
    ref = MegatronPolicy.from_config(cfg, model_dir)
    steps(ref, 3)
    res["ref"] = _params(ref)
    res["ref_state"] = _inner_state(ref)

    fresh = MegatronPolicy.from_config(cfg, model_dir)
    fresh.save(f"{ckpt_dir}/fresh")
    res["fresh_saved_state"] = _inner_state(fresh)
    loaded = MegatronPolicy.from_config(cfg, model_dir)
    loaded.load(f"{ckpt_dir}/fresh")
    res["fresh_loaded_state"] = _inner_state(loaded)
    steps(loaded, 3)
    res["fresh"] = _params(loaded)

    middle = MegatronPolicy.from_config(cfg, model_dir)
    steps(middle, 1)
    middle.save(f"{ckpt_dir}/middle")
    resumed = MegatronPolicy.from_config(cfg, model_dir)
    resumed.load(f"{ckpt_dir}/middle")
    res["middle_loaded_state"] = _inner_state(resumed)
    res["middle_loaded_step"] = resumed.step
    steps(resumed, 2)
    res["middle"] = _params(resumed)
    return res
