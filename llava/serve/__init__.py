"""Talking to a model interactively (the terminal chat)."""
