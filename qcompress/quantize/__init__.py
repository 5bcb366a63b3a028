"""The quantize workflow: plan file, per-tensor policy, bit budgets, the pipeline, sharded runs."""
