"""The projector from vision features to the language model's embedding space."""

from __future__ import annotations

import re

from torch import nn


class IdentityMap(nn.Module):
    def forward(self, x, *args, **kwargs):
        return x

    @property
    def config(self) -> dict:
        return {"mm_projector_type": "identity"}


def build_vision_projector(config, **kwargs) -> nn.Module:
    """`linear`, `mlp{N}x_gelu` (N linear layers with GELU between) or `identity`."""
    projector_type = getattr(config, "mm_projector_type", "linear")
    if projector_type == "linear":
        return nn.Linear(config.mm_hidden_size, config.hidden_size)
    mlp = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if mlp:
        depth = int(mlp.group(1))
        if depth < 1:
            raise ValueError(f"projector {projector_type!r} needs at least one layer")
        layers: list[nn.Module] = [nn.Linear(config.mm_hidden_size, config.hidden_size)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)]
        return nn.Sequential(*layers)
    if projector_type == "identity":
        return IdentityMap()
    raise ValueError(f"unknown projector type {projector_type!r}; use linear, mlp<N>x_gelu or identity")
