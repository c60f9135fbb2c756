"""Rollout engines (HF transformers, vLLM) behind one protocol, and the OpenAI-compatible gateway.

Nothing is imported here: `p2o.rollout.engine` (records + protocol), `hf_engine`, `vllm_engine` (GPU only),
`scheduler` + `gateway` (serving), `factory` (build from `RolloutConfig`). See docs/rollout.md.
"""
