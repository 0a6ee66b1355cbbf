"""Task metrics of the validation sets, their command line, and the GPT-judged review set and score."""
