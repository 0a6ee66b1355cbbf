"""LLaVA-1.5 zero-shot benchmark evaluation: generation, chunk merging, scorers, converters, GPT review."""
