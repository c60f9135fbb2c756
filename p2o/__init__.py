"""P2O: joint policy and prompt optimisation for RL with verifiable rewards."""
__version__ = "0.1.0"
