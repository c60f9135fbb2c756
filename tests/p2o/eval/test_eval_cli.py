"""`p2o eval` end to end with the tiny model through the real HF engine and verifier; `p2o eval compare`; CLI errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2o.cli import main
from p2o.eval.benchmarks import get_spec
from p2o.eval.harness import EvalSettings, ProblemResult, summarise
from p2o.eval.results import write_run

FIXTURES = Path(__file__).resolve().parents[2] / "data" / "benchmarks"


@pytest.mark.slow
def test_eval_end_to_end_tiny_model(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "run"
    argv = ["eval", "--model", str(tiny_model_dir), "--data-dir", str(FIXTURES), "--benchmarks", "aime25,math500",
            "--limit", "2", "--samples", "2", "--pass-k", "1,2", "--max-new-tokens", "6", "--seed", "7",
            "--out", str(out), "--label", "tiny", "--override", "reward.workers=1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| Model | AIME25 | MATH500 | Avg |" in printed
    run = json.loads((out / "run.json").read_text())
    by_name = {b["name"]: b for b in run["benchmarks"]}
    assert by_name["aime25"]["protocol"] == "sampled" and by_name["aime25"]["samples"] == 2
    assert by_name["aime25"]["temperature"] == 0.6
    assert by_name["math500"]["protocol"] == "greedy" and by_name["math500"]["samples"] == 1
    results = {name: [ProblemResult.from_dict(json.loads(line))
                      for line in (out / "problems" / f"{name}.jsonl").read_text().splitlines()]
               for name in ("aime25", "math500")}
    assert [r.id for r in results["aime25"]] == ["aime25-0", "aime25-1"]
    assert [r.n for r in results["aime25"]] == [2, 2] and [r.n for r in results["math500"]] == [1, 1]
    assert all(1 <= t <= 6 for rs in results.values() for r in rs for t in r.response_tokens)

    # independent check of the stored outputs: regenerate greedily with the engine and re-verify every response
    from p2o.config import RewardConfig
    from p2o.eval.benchmarks import load_benchmark
    from p2o.eval.harness import build_prompts, problem_seed
    from p2o.reward import Verifier
    from p2o.rollout.engine import GenerationRequest, SamplingParams
    from p2o.rollout.hf_engine import HFEngine

    engine = HFEngine.from_pretrained(tiny_model_dir)
    problems = load_benchmark("math500", FIXTURES, limit=2)
    prompts = build_prompts(engine.tokenizer, problems, EvalSettings())
    assert engine.tokenizer.decode(prompts[0]).count(problems[0].question) == 1
    gens = engine.generate([GenerationRequest(p, SamplingParams(n=1, temperature=0.0, max_new_tokens=6,
                                                                seed=problem_seed(7, "math500", q.id)))
                            for p, q in zip(prompts, problems, strict=True)])
    assert [g[0].text for g in gens] == [r.responses[0] for r in results["math500"]]
    with Verifier(RewardConfig(workers=1)) as v:
        for rs in results.values():
            for r in rs:
                verdicts = v.score_many([(text, r.answer) for text in r.responses])
                assert [x.correct for x in verdicts] == r.verdicts and r.correct == sum(r.verdicts)

    # --resume keeps finished benchmarks of a run with the same settings (their timings are unchanged)
    before = json.loads((out / "run.json").read_text())
    assert main(argv + ["--resume"]) == 0
    assert json.loads((out / "run.json").read_text()) == before


def _run(path: Path, label: str, verdicts: list[bool]) -> Path:
    spec = get_spec("math500")
    problems = [ProblemResult("math500", f"m{i}", "1", 1, int(v), float(v), [v], ["1"], [3], ["stop"])
                for i, v in enumerate(verdicts)]
    return write_run(path, [summarise(spec, "greedy", problems, EvalSettings())], label, {})


def test_compare_cli(tmp_path, capsys):
    a = _run(tmp_path / "a", "grpo", [True, False, False, True])
    b = _run(tmp_path / "b", "p2o", [True, True, False, True])
    table = tmp_path / "cmp.md"
    assert main(["eval", "compare", str(a), str(b), "--bootstrap", "200", "--seed", "1", "--out", str(table)]) == 0
    printed = capsys.readouterr().out
    assert "| MATH500 | 4 | 50.0 | 75.0 | +25.0 |" in printed
    assert table.read_text() == printed
    assert main(["eval", "compare", str(a), str(tmp_path / "missing")]) == 2
    assert "not an evaluation run directory" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--benchmarks", "gsm8k"], "unknown benchmark 'gsm8k'"),
    (["--benchmarks", "math500", "--data-dir", "{tmp}"], "benchmark 'math500': no data file found"),
    (["--benchmarks", "math500"], "--data-dir: required"),
    (["--file", "math500"], "--file math500: expected NAME=PATH"),
    (["--file", "../x={tmp}/x.jsonl"], "benchmark name '../x': a local benchmark's name must match"),
    (["--benchmarks", "hard"], "unknown benchmark 'hard'"),
    (["--benchmarks", "math500", "--file", "math500={tmp}/x.jsonl"], "x.jsonl: file not found"),
    (["--data-dir", str(FIXTURES), "--model", "{tmp}/nope"], "no such directory"),
    (["--data-dir", str(FIXTURES), "--model", "{tmp}/megatron"], "Megatron-LM training checkpoint"),
    (["--data-dir", str(FIXTURES), "--model", "{tmp}/step_000004"], "pass --hf-config"),
    (["--data-dir", str(FIXTURES), "--override", "model.thinking=maybe"], "model.thinking"),
    (["--data-dir", str(FIXTURES), "--device", "cuda"], "CUDA is not available"),
])
def test_eval_cli_errors(tmp_path, capsys, argv, message):
    (tmp_path / "megatron" / "iter_0000010").mkdir(parents=True)
    (tmp_path / "megatron" / "latest_checkpointed_iteration.txt").write_text("10")
    (tmp_path / "step_000004" / "policy").mkdir(parents=True)
    (tmp_path / "step_000004" / "policy" / ".metadata").write_bytes(b"")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--model" not in argv:
        argv += ["--model", "tiny-qwen3"]
    assert main(["eval", "--out", str(tmp_path / "o"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_local_benchmark_file(tmp_path, tiny_model_dir):
    """`--file NAME=PATH` with a name outside the registry: the training data's records, evaluated alone when
    --benchmarks is not given; the protocol follows the file's full size, not --limit."""
    src = tmp_path / "hard.jsonl"
    src.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n"
                           for i in range(3)))
    common = ["eval", "--model", str(tiny_model_dir), "--file", f"hard={src}", "--samples", "2", "--pass-k", "1,2",
              "--max-new-tokens", "4", "--override", "reward.workers=1"]
    assert main([*common, "--out", str(tmp_path / "sampled")]) == 0
    [b] = json.loads((tmp_path / "sampled" / "run.json").read_text())["benchmarks"]
    assert (b["name"], b["title"], b["protocol"], b["samples"]) == ("hard", "hard", "sampled", 2)
    lines = [json.loads(x) for x in (tmp_path / "sampled" / "problems" / "hard.jsonl").read_text().splitlines()]
    assert [(r["id"], r["answer"], r["n"]) for r in lines] == [("q0", "1", 2), ("q1", "2", 2), ("q2", "3", 2)]
    assert main([*common, "--sampled-below", "3", "--limit", "1", "--out", str(tmp_path / "greedy")]) == 0
    [b] = json.loads((tmp_path / "greedy" / "run.json").read_text())["benchmarks"]
    lines = (tmp_path / "greedy" / "problems" / "hard.jsonl").read_text().splitlines()
    assert (b["protocol"], b["samples"], len(lines)) == ("greedy", 1, 1)


@pytest.mark.slow
@pytest.mark.multiproc
def test_megatron_checkpoint_converted_on_the_fly(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    from megatron_bridge.convert import hf_to_megatron
    from p2o.eval.checkpoint import resolve_checkpoint

    ckpt = hf_to_megatron(str(tiny_model_dir), tmp_path / "mcore")
    converted = resolve_checkpoint(str(ckpt), convert_dir=tmp_path / "run" / "hf_model")
    assert converted == tmp_path / "run" / "hf_model"
    assert json.loads((converted / "p2o_source.json").read_text())["megatron"] == str((ckpt / "model").resolve())
    assert (converted / "tokenizer.json").is_file() and (converted / "config.json").is_file()
    # the engine gets exactly the original weights (the HF -> Megatron -> HF round trip is exact)
    ref = {k: v for f in tiny_model_dir.glob("*.safetensors") for k, v in load_file(f).items()}
    got = {k: v for f in converted.glob("*.safetensors") for k, v in load_file(f).items()}
    assert got and set(got) <= set(ref) and all(got[k].equal(ref[k]) for k in got)
    # resolving the same checkpoint again reuses the conversion
    stamp = {p.name: p.stat().st_mtime_ns for p in converted.glob("*.safetensors")}
    assert resolve_checkpoint(str(ckpt), convert_dir=converted) == converted
    assert {p.name: p.stat().st_mtime_ns for p in converted.glob("*.safetensors")} == stamp


def test_prompts_follow_the_training_convention(tiny_model_dir):
    from transformers import AutoTokenizer

    from p2o.data.problem import Problem
    from p2o.eval.harness import build_prompts

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    q = Problem("p", "What is $2+3$?", "5")
    [plain] = build_prompts(tok, [q], EvalSettings())
    assert "What is $2+3$? Let's think step by step and output the final answer within \\boxed{}." in tok.decode(plain)
    settings = EvalSettings(user_template="Problem: {question}", system="Be brief.", template="  Check twice.\n")
    text = tok.decode(build_prompts(tok, [q], settings)[0])
    assert "Be brief." in text and "Check twice.\n\nProblem: What is $2+3$?" in text and "step by step" not in text
    assert text.index("Be brief.") < text.index("Check twice.")
