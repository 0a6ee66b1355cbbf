"""The CLIP vision tower wrapper: the selected layer's features without running the layers after it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower


@pytest.fixture(scope="module")
def tower_dir(tmp_path_factory):
    # Three layers, so that -2 leaves one layer out and 1 two.
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                              image_size=16, patch_size=4, projection_dim=16)  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tower")
    CLIPVisionModel(config).save_pretrained(str(folder))
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(str(folder))
    return str(folder)


@pytest.mark.parametrize("layer", [-2, -1, -4, 0, 1, 3])
@pytest.mark.parametrize("feature", ["patch", "cls_patch"])
def test_features_equal_the_full_forwards_hidden_state(tower_dir, layer, feature):
    tower = CLIPVisionTower(tower_dir, SimpleNamespace(mm_vision_select_layer=layer, mm_vision_select_feature=feature))
    pixels = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = tower.vision_tower(pixels, output_hidden_states=True)
    expected = full.hidden_states[layer][:, 1:] if feature == "patch" else full.hidden_states[layer]
    got = tower(pixels)
    assert got.shape == expected.shape == (3, 16 + (feature == "cls_patch"), 32)
    assert torch.equal(got, expected)  # the same operations: bit for bit
    assert torch.equal(tower.feature_select(full), expected)
    # A list of images (any resolution LLaVA passes one by one) gives each image's own features.
    each = tower([pixels[0], pixels[2]])
    torch.testing.assert_close(each[0][0], expected[0])
    torch.testing.assert_close(each[1][0], expected[2])


def test_a_layer_outside_the_tower_names_the_flag(tower_dir):
    tower = CLIPVisionTower(tower_dir, SimpleNamespace(mm_vision_select_layer=-5))
    with pytest.raises(ValueError, match="mm_vision_select_layer -5 is outside the tower's 4 hidden states"):
        tower(torch.zeros(1, 3, 16, 16))
