"""The loop's view of its policy backend. The types live in `p2o.policy_api`, where the backends below the
trainer (`megatron_bridge`) import them too; this module re-exports them for the loop."""
from p2o.policy_api import HiddenStateLoss, LossFn, PolicyBackend, SequenceBatch, StepMetrics, WeightBucket

__all__ = ["HiddenStateLoss", "LossFn", "PolicyBackend", "SequenceBatch", "StepMetrics", "WeightBucket"]
