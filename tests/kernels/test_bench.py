"""Smoke test of the kernel benchmark driver on CPU (torch fallback path, tiny shapes)."""
from __future__ import annotations

import argparse
import csv

import pytest
import torch

from kernels.bench import run


def test_cpu_rows_and_csv(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the CPU bench measures the torch fallback, not the interpreter
    env = run._env("cpu")
    rows, _ = run.run_case("tiny", 64, 32, 2048, "cpu", torch.float32, run.CPU_PROVIDERS, ("forward", "full"), 0,
                           env, None)
    assert {r["provider"] for r in rows} == set(run.CPU_PROVIDERS)
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    full = {r["provider"]: r for r in rows if r["mode"] == "full"}
    # the naive provider holds at least the fp32 logits [T, V] at its peak
    assert full["eager"]["peak_extra_bytes"] >= 64 * 2048 * 4
    assert all(r["ms_median"] > 0 for r in rows)
    out = tmp_path / "k.csv"
    run._append_csv(str(out), rows)
    run._append_csv(str(out), rows[:1])
    got = list(csv.DictReader(out.open()))
    assert len(got) == len(rows) + 1 and got[0]["device"].startswith("CPU") and got[0]["commit"]
    run._print_table(rows)
    assert "grpo-fused" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without CUDA")
def test_gpu_mode_without_cuda_says_so(capsys):
    parser = argparse.ArgumentParser()
    run.add_arguments(parser)
    assert run.main(parser.parse_args([])) == 2
    assert "--cpu" in capsys.readouterr().err
