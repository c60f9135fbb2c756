"""CPU-scale evidence: `p2o bench vs-trl` (our GRPO step vs TRL's GRPOTrainer) and `p2o experiment arithmetic`
(GRPO K=4, GRPO K=8 and P2O Self-Ref on the same problems and token budget)."""
