"""configs/scaling: every file loads with `load_config` and holds the planner's recommendation it states."""
import re

import pytest

from p2o.config import load_config
from p2o.plan.layouts import Cluster, RunSettings
from p2o.plan.planner import recommend
from p2o.plan.presets import PRESETS
from p2o.plan.throughput import resolve_vllm_tp

# The settings each file's header states it was planned with.
RUN = RunSettings(prompt_tokens=256, response_tokens=3072, max_response_tokens=12288, vllm_gpu_memory_fraction=0.7,
                  micro_batch=1)


@pytest.mark.parametrize("size", ["4b", "8b", "14b", "32b"])
def test_config_loads_and_matches_the_planner(size, repo_root):
    path = repo_root / "configs" / "scaling" / f"qwen3_{size}_p2o.yaml"
    cfg = load_config(str(path))
    text = path.read_text()
    model = f"Qwen3-{size.upper()}"
    assert cfg.model.path == f"models/{model}" and cfg.model.dtype == "bfloat16"
    nodes = int(re.search(r"recommendation for (\d+) node", text).group(1))
    cluster = Cluster(nodes=nodes)
    run = resolve_vllm_tp(PRESETS[model], cluster, RUN)
    best = recommend(PRESETS[model], cluster, run)
    assert (cfg.parallel.tp, cfg.parallel.pp, cfg.rollout.vllm_tp) == (best.layout.tp, best.layout.pp, run.vllm_tp)
    for n in (1, 2, 4, 8):  # the commented layouts are the planner's too
        row = recommend(PRESETS[model], Cluster(nodes=n), resolve_vllm_tp(PRESETS[model], Cluster(nodes=n), RUN))
        line = next(ln for ln in text.splitlines() if re.match(rf"#\s+{n} nodes?\s", ln))
        if row is None:
            assert "none fits" in line
        else:
            assert f"parallel.tp={row.layout.tp} parallel.pp={row.layout.pp} (DP={row.layout.dp})" in line
