"""Scheduler core without HTTP: batch packing by sequences, error isolation, cancellation, pause/resume."""
from __future__ import annotations

import pytest

from p2o.rollout.engine import GenerationRequest, SamplingParams
from p2o.rollout.scheduler import RequestTimeout, Scheduler, priority_value
from tests.p2o.rollout.helpers import make_engine


@pytest.fixture()
def sched(tiny_model_dir, tiny_tokenizer):
    s = Scheduler(make_engine(tiny_model_dir, tiny_tokenizer, max_batch_size=4), max_batch_sequences=4).start()
    yield s
    s.close()


def req(n: int = 1, rid: str = "", ids=(1, 2, 3)) -> GenerationRequest:
    return GenerationRequest(list(ids), SamplingParams(n=n, max_new_tokens=3, seed=0), rid)


def test_batches_pack_sequences_in_priority_order(sched):
    sched.pause()
    sched.submit([req(2, "r1")], priority="reflection")
    sched.submit([req(1, "e1"), req(3, "e2")], priority="evaluation")
    sched.submit([req(5, "big")], priority="training")  # larger than a batch: served alone
    sched.submit([req(1, "t1")], priority="training")
    sched.resume()
    out = sched.generate([req(1, "last")], priority="reflection")
    assert len(out[0]) == 1
    batches = [r.request_ids for r in sched.batch_log]
    assert batches == [["big"], ["t1", "e1"], ["e2"], ["r1", "last"]]
    assert [r.sequences for r in sched.batch_log] == [5, 2, 3, 3]


def test_a_failing_request_fails_alone(sched):
    sched.pause()
    good, bad = sched.submit([req(rid="good"), req(rid="bad", ids=(10 ** 7,))], priority="evaluation")
    sched.resume()
    assert len(good.result(timeout=60)) == 1
    with pytest.raises(ValueError, match="vocabulary"):
        bad.result(timeout=60)


def test_cancel_and_timeout_while_queued(sched):
    sched.pause()
    [cancelled] = sched.submit([req(rid="c")])
    [late] = sched.submit([req(rid="late")], timeout_s=0.05)
    sched.cancel([cancelled])
    with pytest.raises(RequestTimeout):
        late.result(timeout=10)
    sched.resume()
    sched.generate([req(rid="after")])
    assert cancelled.cancelled()
    assert all("c" not in r.request_ids for r in sched.batch_log)
    assert sched.counters["timeouts"] == 1


def test_priority_names():
    assert priority_value("training") == 0 < priority_value("evaluation") < priority_value("reflection")
    with pytest.raises(ValueError, match="priority"):
        priority_value("urgent")


def test_a_request_travels_to_other_ranks_without_its_cancel_event():
    """Generation phases pickle requests for the other ranks' engines; the cancel event stays in this process."""
    import pickle
    import threading

    event = threading.Event()
    req = GenerationRequest([1, 2, 3], SamplingParams(n=2, max_new_tokens=4), "r1", priority=1, cancel=event)
    copy = pickle.loads(pickle.dumps(req))
    assert (copy.prompt_ids, copy.params, copy.request_id, copy.priority) == ([1, 2, 3], req.params, "r1", 1)
    assert copy.cancel is None and req.cancel is event
    event.set()
    assert req.cancelled and not copy.cancelled
