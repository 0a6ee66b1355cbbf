"""The embedded toy benchmark: its generator, its tiny model, and the seed-spread tables of the demo."""
