"""Training: entry points, the LLaVA trainer and the task loss-weighting methods."""
