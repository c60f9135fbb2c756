"""The GEPA algorithm, pure: no network, files or subprocesses (the service persists its state)."""
