"""configs/scaling: every file loads with `load_config` and holds the planner's recommendation it states, planned
from the file's own settings (micro-batch, recompute, kernels, vLLM fraction) and the mean lengths its header
names."""
import re

import pytest

from p2o.config import load_config
from p2o.plan.from_config import settings_from_config
from p2o.plan.layouts import Cluster, RunSettings
from p2o.plan.planner import recommend
from p2o.plan.presets import PRESETS
from p2o.plan.throughput import resolve_vllm_tp

MEANS = dict(prompt_tokens=256, response_tokens=3072)  # the header's --prompt-tokens / --response-tokens


@pytest.mark.parametrize("size", ["4b", "8b", "14b", "32b"])
def test_config_loads_and_matches_the_planner(size, repo_root):
    path = repo_root / "configs" / "scaling" / f"qwen3_{size}_p2o.yaml"
    cfg = load_config(str(path))
    text = path.read_text()
    model = f"Qwen3-{size.upper()}"
    assert cfg.model.path == f"models/{model}" and cfg.model.dtype == "bfloat16"
    _, values, _ = settings_from_config(cfg)
    run = RunSettings(**(values | MEANS | {"vllm_tp": 0}))  # vLLM TP: the planner's choice, as the header's
    assert (run.max_response_tokens, run.micro_batch, run.recompute, run.vllm_gpu_memory_fraction) == (12288, 1, True, 0.4)
    nodes = int(re.search(r"recommendation for (\d+) node", text).group(1))
    cluster = Cluster(nodes=nodes)
    planned = resolve_vllm_tp(PRESETS[model], cluster, run)
    best = recommend(PRESETS[model], cluster, planned)
    assert (cfg.parallel.tp, cfg.parallel.pp, cfg.rollout.vllm_tp) == (best.layout.tp, best.layout.pp, planned.vllm_tp)
    for n in (1, 2, 4, 8):  # the commented layouts are the planner's too
        r = resolve_vllm_tp(PRESETS[model], Cluster(nodes=n), run)
        row = recommend(PRESETS[model], Cluster(nodes=n), r)
        line = next(ln for ln in text.splitlines() if re.match(rf"#\s+{n} nodes?\s", ln))
        if row is None:
            assert "none fits" in line
        else:
            assert f"parallel.tp={row.layout.tp} parallel.pp={row.layout.pp} (DP={row.layout.dp})" in line
