"""Microbenchmarks of the kernels (`p2o bench kernels` / `python -m kernels.bench.run`)."""
