"""Micro-batch padding (megatron_bridge.forward): each micro-batch padded to its own longest row, S rounded up to a
multiple (sequence parallelism needs S % tp == 0), and no fp32 copy of the last stage's output under bf16.

Unit tests check the shapes and the scoring bookkeeping; a 1-rank and a 2-rank (TP=2) launch check on a real
MegatronPolicy, with and without the fused kernels, that log-probs, loss, grad norm and the gradients of one step
equal those of padding every micro-batch to the batch's longest row, and that with bf16 weights the loss function
gets bf16 outputs (hidden states only, the LM head never runs, on the kernel path) with unchanged log-probs.
Sequence parallelism itself cannot run on CPU (Megatron's torch norm rejects it), so its padding is checked as
S rounded up to 4 without it.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mb_workers import spawned_results
from padding_workers import padding_worker, ragged_batch

from megatron_bridge.forward import make_micro_batches, padded_length, sequence_multiple

CONFIG = Path(__file__).parent / "configs" / "qwen3_gqa2_hd24_tied.json"
TOL = dict(rtol=2e-5, atol=2e-6)  # different padded shapes change only the order of fp32 reductions


def test_padded_length_and_sequence_multiple():
    assert [padded_length(n, 4) for n in (1, 4, 5, 8)] == [4, 4, 8, 8]
    assert padded_length(7, 1) == 7
    assert sequence_multiple(2, True) == 2 and sequence_multiple(2, False) == 1 and sequence_multiple(1, True) == 1


def test_micro_batches_padded_each_to_its_longest_row():
    batch, _ = ragged_batch()  # row lengths 40, 5, 7, 3, 21, 10, 3
    per, S = make_micro_batches(batch, 2, "cpu")
    wide, S_wide = make_micro_batches(batch, 2, "cpu", per_micro_batch=False)
    assert [mb.tokens.shape[1] for mb in per] == [40, 7, 21, 3] and S == 40
    assert [mb.tokens.shape[1] for mb in wide] == [40] * 4 and S_wide == 40
    sp, S_sp = make_micro_batches(batch, 2, "cpu", seq_multiple=4)
    assert [mb.tokens.shape[1] for mb in sp] == [40, 8, 24, 4] and S_sp == 40
    for a, b, c in zip(per, wide, sp, strict=True):  # the same scoring positions, targets and packing
        for x in (b, c):
            assert a.rows == x.rows and a.token_slice == x.token_slice
            assert torch.equal(a.targets, x.targets)
            assert all(torch.equal(u, v) for u, v in zip(a.score_index, x.score_index, strict=True))
            S_a = a.tokens.shape[1]
            assert torch.equal(x.tokens[:, :S_a], a.tokens) and not x.tokens[:, S_a:].any()
    # extra all-padding micro-batches (interleaved schedule) take the batch's length
    extra, _ = make_micro_batches(batch, 4, "cpu", min_micro_batches=3, seq_multiple=4)
    assert [mb.tokens.shape[1] for mb in extra] == [40, 24, 40] and extra[2].rows == []
    fixed, S_fixed = make_micro_batches(batch, 2, "cpu", seq_len=48)
    assert {mb.tokens.shape[1] for mb in fixed} == {48} and S_fixed == 48
    empty, S_empty = make_micro_batches(type(batch)([], []), 2, "cpu", seq_multiple=2)
    assert S_empty == 2 and empty[0].tokens.shape == (2, 2)
    with pytest.raises(ValueError, match="exceeds the sequence length 16"):
        make_micro_batches(batch, 2, "cpu", seq_len=16)


@pytest.fixture(scope="module")
def model_dir():
    from p2o.models import resolve_model_dir

    return str(resolve_model_dir(str(CONFIG), init_seed=7))


@pytest.fixture(scope="module", params=[1, 2], ids=["tp1", "tp2"])
def results(request, model_dir, tmp_path_factory, worker_id):
    return spawned_results(tmp_path_factory, worker_id, f"padding_tp{request.param}", padding_worker, request.param,
                           (model_dir,))




@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.parametrize("kernels", [False, True], ids=["reference", "kernels"])
def test_padding_changes_no_logprob_loss_or_gradient(results, kernels):
    base = results[(kernels, "batch_wide")]
    assert {s[1] for s in base["shapes"]} == {40}
    for variant in ("per_micro_batch", "multiple_of_4"):
        r = results[(kernels, variant)]
        assert [s[1] for s in r["shapes"]] == ([40, 7, 21, 3] if variant == "per_micro_batch" else [40, 8, 24, 4])
        torch.testing.assert_close(r["logprobs"], base["logprobs"], **TOL)
        assert r["loss"] == pytest.approx(base["loss"], rel=2e-5)
        assert r["grad_norm"] == pytest.approx(base["grad_norm"], rel=2e-5)
        assert base["grads"] and r["grads"].keys() == base["grads"].keys()
        for k, v in base["grads"].items():
            torch.testing.assert_close(r["grads"][k], v, rtol=1e-4, atol=1e-7, msg=k)


@pytest.mark.multiproc
@pytest.mark.slow
@pytest.mark.parametrize("kernels", [False, True], ids=["reference", "kernels"])
def test_bf16_outputs_stay_bf16_and_logprobs_unchanged(results, kernels):
    r = results["bf16"][kernels]
    assert {dtype for dtype, _ in r["received"]} == {torch.bfloat16}
    if kernels:  # hidden-only forward: [S_mb, B, H] hidden states, and the LM head never ran
        assert r["head_calls"] == 0
        assert [shape for _, shape in r["received"]] == [(40, 2, r["hidden"]), (7, 2, r["hidden"]),
                                                         (21, 2, r["hidden"]), (3, 2, r["hidden"])]
    else:  # logits [B, S_mb, V/TP] in bf16: the fp32 copy is made only of the scored rows
        assert r["head_calls"] == 4 and {shape[-1] for _, shape in r["received"]} == {r["v_local"]}
    assert torch.equal(r["logprobs"], r["logprobs_upcast"])  # upcasting is exact: same log-probs as before
