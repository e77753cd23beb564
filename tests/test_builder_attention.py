"""Cross-attention capture: where the processors go, what they record, and that it changes nothing."""
from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from actgen.builder.attention import CaptureAttnProcessor, block_resolutions, install_attention_capture
from actgen.builder.tiny import build_tiny_generator


def _inputs(g, prompts, seed=0):
    b = len(prompts)
    x = torch.randn(b, *g.latent_shape, generator=torch.Generator().manual_seed(seed))
    emb = torch.cat([g.embed_unconditional(b), g.embed_prompts(prompts)])     # [uncond; cond]
    return torch.cat([x, x]), emb


def test_processors_only_on_cross_attention_at_the_resolution(tiny_generator):
    assert block_resolutions(tiny_generator.unet, 16) == {
        "down_blocks.0": 16, "down_blocks.1": 8, "up_blocks.0": 8, "up_blocks.1": 16}
    procs = tiny_generator.unet.attn_processors
    captured = {n for n, p in procs.items() if isinstance(p, CaptureAttnProcessor)}
    assert captured == {f"{layer}.processor" for layer in tiny_generator.attention.layers}
    assert captured == {
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor",
        "up_blocks.0.attentions.0.transformer_blocks.0.attn2.processor",
        "up_blocks.0.attentions.1.transformer_blocks.0.attn2.processor"}
    # Self-attention, the 16x16 layers and the mid block (8x8 too) keep diffusers' SDPA.
    assert all(isinstance(p, AttnProcessor2_0) for n, p in procs.items() if n not in captured)


def test_captured_maps_are_token_distributions(tiny_generator):
    g = tiny_generator
    x, emb = _inputs(g, ["a photo of cat", "a photo of aquarium_fish", "a photo of dog"])
    g.predict_noise(x, 700, emb, capture_attention=True)
    maps = g.attention.maps()
    assert maps.shape == (6, 8, 8, 77)                      # [2B, res, res, tokens]
    assert torch.allclose(maps.sum(-1), torch.ones(6, 8, 8), atol=1e-5)
    assert (maps >= 0).all()

    tokens = [[4], [4, 5, 6], [4]]
    mask = g.attention.mask(tokens, cfg_halves=2)
    assert mask.shape == (3, 8, 8)
    # CFG halves averaged, then the class tokens averaged.
    expected = (maps[:3] + maps[3:]) / 2
    assert torch.allclose(mask[1], expected[1][..., [4, 5, 6]].mean(-1))
    assert torch.allclose(mask[0], expected[0][..., 4])


def test_capture_off_records_nothing(tiny_generator):
    g = tiny_generator
    x, emb = _inputs(g, ["a photo of cat"])
    g.predict_noise(x, 700, emb, capture_attention=False)
    with pytest.raises(RuntimeError, match="no attention was captured"):
        g.attention.maps()


def test_capture_does_not_change_the_prediction(tiny_generator):
    reference = build_tiny_generator(seed=0)
    reference.unet.set_attn_processor(AttnProcessor2_0())      # plain SDPA everywhere
    x, emb = _inputs(tiny_generator, ["a photo of cat", "a photo of ship"], seed=3)
    eps = tiny_generator.predict_noise(x, 400, emb, capture_attention=True)
    assert torch.allclose(eps, reference.predict_noise(x, 400, emb), atol=1e-5)


def test_unknown_resolution_names_the_available_ones():
    g = build_tiny_generator(seed=0)
    with pytest.raises(ValueError, match=r"attention_resolution=5.*available sides: \[8, 16\]"):
        install_attention_capture(g.unet, 16, 5)
