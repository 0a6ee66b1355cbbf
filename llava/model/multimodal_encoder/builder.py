"""Build the vision tower named by a model config."""

from __future__ import annotations

import os

from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower


def build_vision_tower(vision_tower_cfg, **kwargs) -> CLIPVisionTower:
    """A CLIP tower from a local folder or a hub name (`openai/...`, `laion/...`, or any CLIP checkpoint)."""
    vision_tower = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
    if not vision_tower:
        raise ValueError("no vision tower configured (mm_vision_tower / --vision_tower is empty)")
    if os.path.exists(vision_tower) or vision_tower.startswith(("openai", "laion")) or "clip" in vision_tower.lower():
        return CLIPVisionTower(vision_tower, args=vision_tower_cfg, **kwargs)
    raise ValueError(f"unknown vision tower {vision_tower!r}: expected a CLIP checkpoint folder or hub name")
