"""Memory / throughput planning for TP x PP x DP layouts, and its validation against real steps.

Arithmetic (no torch): `presets` (model shapes), `layouts` (cluster, run settings, candidate layouts),
`memory` (per-GPU terms and phase peaks), `throughput` (step-time model), `planner` (rank and recommend),
`cli` (`p2o plan`). Measurement: `measure` (tensor-memory tracker, collective byte counter), `mcore_step`
(a measured Megatron-Core / MegatronPolicy training step), `validate` (predicted vs measured), `bench`
(`p2o bench scaling`), `sweep` (the cluster sweep's planning and CSV collection). See docs/scaling.md.
"""
