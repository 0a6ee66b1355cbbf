"""LLaVA-1.5 with VisATB adaptive task balancing."""
