"""purestep's performance harness: `python -m benchmarks` (see `benchmarks.harness`)."""
