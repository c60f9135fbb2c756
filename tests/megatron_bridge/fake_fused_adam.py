"""`FakeTEFusedAdam`: Transformer Engine 2.20's FusedAdam reduced to what a checkpoint touches, runnable on CPU.

TE's `transformer_engine.pytorch.optimizers.FusedAdam` cannot be built here (it allocates its overflow buffer on
"cuda" and steps through CUDA multi-tensor kernels). This stand-in is written from TE 2.20's fused_adam.py and keeps
its state layout and the checkpoint-relevant behaviour:
- the step count is `param_group["step"]` (an int advanced before each update; 1 on the first); there is no
  per-parameter step;
- per-parameter state is "exp_avg" and "exp_avg_sq", created by `initialize_state` on the first `step`;
- `state_dict` / `load_state_dict` pass every per-parameter state name through `name_to_dtype_map`
  (TE's `get_unscaled_state` / `set_scaled_state`), so an unknown name such as "step" raises `KeyError: 'step'`;
- the update is TE's `multi_tensor_adam` kernel: m, v moments, bias corrections 1 - beta^step, and in AdamW mode
  the decay added to the update (p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p)).
Modelled: fp32 moments (TE's default dtypes), no master weights, no capturable mode, no precision-aware options.
`install_as_megatron_adam` makes Megatron-Core 0.16.1 build it where it would build TE's FusedAdam.
"""
from __future__ import annotations

from copy import deepcopy
from itertools import chain

import torch


class FakeTEFusedAdam(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-8, adam_w_mode=True,
                 weight_decay=0.0, **unmodelled):
        if unmodelled:
            raise TypeError(f"FakeTEFusedAdam does not model {sorted(unmodelled)}")
        super().__init__(params, dict(lr=lr, bias_correction=bias_correction, betas=betas, eps=eps,
                                      weight_decay=weight_decay))
        self.adam_w_mode = 1 if adam_w_mode else 0
        self.master_weights = False
        self.store_param_remainders = False
        self.name_to_dtype_map = {"exp_avg": torch.float32, "exp_avg_sq": torch.float32,
                                  "master_param": torch.float32}

    # -- TE's state helpers (fp32 states: no scaling)
    def initialize_state(self, param, store_param_remainders):
        for name in ("exp_avg", "exp_avg_sq"):
            self.state[param][name] = torch.zeros_like(param, dtype=self.name_to_dtype_map[name])

    def get_unscaled_state(self, param, state_name):
        dtype = self.name_to_dtype_map[state_name]  # KeyError for names TE does not know, e.g. "step"
        state = self.state[param][state_name]
        assert state.dtype == dtype
        return state

    def set_scaled_state(self, param, state_name, unscaled_state):
        assert unscaled_state.dtype == torch.float32
        state = self.state[param]
        if state_name not in state:
            state[state_name] = torch.empty_like(param, dtype=self.name_to_dtype_map[state_name])
        state[state_name].copy_(unscaled_state)

    def _id_map(self, saved_groups) -> dict:
        return dict(zip(chain.from_iterable(g["params"] for g in saved_groups),
                        chain.from_iterable(g["params"] for g in self.param_groups), strict=True))

    def state_dict(self):
        state_dict = super().state_dict()
        id_map = self._id_map(deepcopy(state_dict["param_groups"]))
        for k, v in state_dict["state"].items():
            if k in id_map:
                state_dict["state"][k] = {name: self.get_unscaled_state(id_map[k], name) for name in v}
        return state_dict

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        id_map = self._id_map(deepcopy(state_dict["param_groups"]))
        for k, v in state_dict["state"].items():
            if k in id_map:
                param = id_map[k]
                self.state[param] = {}
                for name in v:
                    if v[name] is not None:
                        self.set_scaled_state(param, name, v[name].float())

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            group["step"] = group["step"] + 1 if "step" in group else 1
            beta1, beta2 = group["betas"]
            bc1 = 1 - beta1 ** group["step"] if group["bias_correction"] else 1.0
            bc2 = 1 - beta2 ** group["step"] if group["bias_correction"] else 1.0
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                state = self.state[p]
                if len(state) == 0:
                    self.initialize_state(p, False)
                if p.grad is None:
                    continue
                g = p.grad.float()
                if not self.adam_w_mode:
                    g = g + wd * p.float()
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                update = (m / bc1) / ((v / bc2).sqrt() + eps)
                if self.adam_w_mode:
                    update = update + wd * p.float()
                p.sub_((lr * update).to(p.dtype))
        return loss


def install_as_megatron_adam() -> None:
    """Make Megatron-Core pick FakeTEFusedAdam as it picks TE's FusedAdam when TE imports (module globals of
    `megatron.core.optimizer` and `megatron.core.optimizer.distrib_optimizer`, set at their import)."""
    import megatron.core.optimizer as mopt
    import megatron.core.optimizer.distrib_optimizer as dopt

    mopt.Adam, mopt.USING_PYTORCH_OPTIMIZER = FakeTEFusedAdam, False
    dopt.Adam, dopt.HAVE_APEX_OR_TE, dopt.USING_TE_OPTIMIZER, dopt.USING_APEX_OPTIMIZER = (FakeTEFusedAdam, True,
                                                                                            True, False)
