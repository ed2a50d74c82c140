"""`zen-coder eval`: code benchmarks, executed in a sandbox, scored by unbiased pass@k."""
