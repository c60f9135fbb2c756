"""`p2o bench scaling`: the scaling arithmetic, and one real (1-rank, gloo) run writing its CSV row."""
import argparse
import csv

import pytest

from p2o.plan.bench import FIELDS, efficiency, spec_for


def _args(**kw):
    base = dict(seq=32, micro_batch=2, micro_batches=4, steps=1)
    return argparse.Namespace(**(base | kw))


def test_strong_and_weak_specs():
    s1, s2 = spec_for("dp", "strong", 1, _args()), spec_for("dp", "strong", 2, _args())
    assert (s1.dp, s1.micro_batches, s2.dp, s2.micro_batches) == (1, 4, 2, 2)  # same global batch
    w2 = spec_for("dp", "weak", 2, _args())
    assert (w2.dp, w2.micro_batches) == (2, 4)  # same per-rank batch
    assert spec_for("tp", "weak", 2, _args()) is None
    assert (spec_for("tp", "strong", 2, _args()).tp, spec_for("pp", "strong", 2, _args()).pp) == (2, 2)
    with pytest.raises(ValueError, match="micro-batches 4 must be divisible"):
        spec_for("dp", "strong", 3, _args())


def test_efficiency():
    assert efficiency("strong", 2, t1=1.0, tn=0.5) == 1.0  # perfect: half the time on twice the ranks
    assert efficiency("strong", 2, t1=1.0, tn=1.0) == 0.5
    assert efficiency("weak", 4, t1=1.0, tn=1.25) == 0.8


@pytest.mark.multiproc
@pytest.mark.xdist_group("plan_spawned_ranks")  # one spawned job at a time on 2 cores
@pytest.mark.slow
def test_bench_scaling_writes_csv(tmp_path, capsys):
    from p2o.cli import main

    out = tmp_path / "scaling.csv"
    rc = main(["bench", "scaling", "--ranks", "1", "--modes", "strong", "--steps", "1", "--seq", "32",
               "--micro-batches", "2", "--csv", str(out)])
    assert rc == 0
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == list(FIELDS) and len(rows) == 1
    r = rows[0]
    assert r["mode"] == "strong" and float(r["step_s"]) > 0 and float(r["efficiency"]) == 1.0
    assert float(r["peak_mib"]) > 50  # tiny-qwen3: ~49 MiB of weights/grads/Adam + the 49152-wide logits
    assert "tok/s/rank" in capsys.readouterr().out
