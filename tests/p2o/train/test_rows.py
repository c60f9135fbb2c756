"""Request planning and row assembly: templates go to exactly the assigned hard samples; rows train on x."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from p2o import prompts
from p2o.config import load_config
from p2o.data.problem import Problem
from p2o.rollout.engine import Generation
from p2o.seeds import derive_seed
from p2o.train.rows import plan_requests, to_rows


@pytest.fixture(scope="module")
def tok(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


def _problems(n):
    return [Problem(f"p{i}", f"What is {i} + {i}?", str(2 * i)) for i in range(n)]


def test_templates_only_for_assigned_problems(tok):
    cfg = load_config(None, ["rollout.n=3", "model.path=tiny-qwen3"])
    ps = _problems(3)
    assignment = {"p1": ["Add twice.", "", "Think in tens."]}
    planned = plan_requests(cfg, tok, ps, assignment, step=1)
    assert [(p.problem.id, p.template, p.request.params.n) for p in planned] == [
        ("p0", "", 3), ("p1", "Add twice.", 1), ("p1", "", 1), ("p1", "Think in tens.", 1), ("p2", "", 3)]
    x1 = prompts.encode(tok, prompts.messages("What is 1 + 1?"))
    for p in planned:
        if p.problem.id == "p1":
            assert p.train_prompt_ids == x1
            expected = prompts.encode(tok, prompts.messages("What is 1 + 1?", p.template or None))
            assert p.request.prompt_ids == expected
    assert len({p.request.params.seed for p in planned}) == len(planned)


def test_p2o_off_ignores_assignment(tok):
    cfg = load_config(None, ["rollout.n=2", "p2o.enabled=false", "model.path=tiny-qwen3"])
    planned = plan_requests(cfg, tok, _problems(2), {"p0": ["Z", "Z"]}, step=1)
    assert all(p.template == "" and p.request.params.n == 2 for p in planned)


def test_assignment_length_must_be_k(tok):
    cfg = load_config(None, ["rollout.n=3", "model.path=tiny-qwen3"])
    with pytest.raises(ValueError, match="expected rollout.n = 3"):
        plan_requests(cfg, tok, _problems(1), {"p0": ["a", "b"]}, step=1)


def test_rows_keep_x_for_training(tok):
    cfg = load_config(None, ["rollout.n=2", "model.path=tiny-qwen3"])
    planned = plan_requests(cfg, tok, _problems(1), {"p0": ["Hint A", "Hint B"]}, step=4)
    gens = [[Generation(p.request.prompt_ids, [5, 6], [-0.1, -0.2], "t", "length", 3)] for p in planned]
    rows = to_rows(planned, gens)
    assert len(rows) == 2 and all(r.templated for r in rows)
    assert all(r.train_prompt_ids != r.gen_prompt_ids and r.train_prompt_ids == planned[0].train_prompt_ids for r in rows)


def test_empty_templates_are_no_assignment(tok):
    """GEPA keeping only the empty template: the group is planned exactly as plain GRPO plans it (one seeded
    request for its n responses), so such a P2O epoch draws GRPO's samples; one real template splits it."""
    cfg = load_config(None, ["rollout.n=2", "model.path=tiny-qwen3"])

    def plan(assignment):
        return [(p.group, p.template, p.request.prompt_ids, p.request.params, p.request.request_id, p.train_prompt_ids)
                for p in plan_requests(cfg, tok, _problems(2), assignment, step=3)]

    assert plan({"p0": ["", " "]}) == plan({}) and len(plan({})) == 2
    mixed = plan({"p0": ["", "Hint"]})
    assert [(g, z, params.n) for g, z, _, params, _, _ in mixed] == [(0, "", 1), (0, "Hint", 1), (1, "", 2)]
    assert mixed[0][4:] != plan({})[0][4:]  # its own request id and seed


def test_derive_seed_stable():
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 1, 3)


def test_advertised_url_replaces_wildcard_binds():
    import socket

    from p2o.train.runtime import advertised_url

    host = socket.gethostname()
    assert advertised_url("http://0.0.0.0:8000") == f"http://{host}:8000"
    assert advertised_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert advertised_url("http://node7:9") == "http://node7:9"
