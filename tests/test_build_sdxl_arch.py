"""The real SDXL architecture through the real command: SDXL base 1.0's full architecture (random
weights, a locally built tokenizer of CLIP's vocabulary size) at 64x64, checked in-process (where
attention is captured, the class token's position, the conditioning), then ``actgen-build`` on it
in all three modes, contrastive and adversarial on, then ``verify``.

The architecture's configs ship beside this file, ``configs/sdxl-base-arch`` (see its README).
Everything runs in bfloat16: SDXL's UNet has 2.57B parameters, 10.3 GB in float32, and with the
second text encoder (0.69B) a float32 copy would not fit beside other work on a 24 GB machine;
in bfloat16 the whole generator is 7 GB. Slow: 3.5 minutes on a busy 2-core machine (2.4 CPU
minutes), 10 GB of memory at the peak.
"""
from __future__ import annotations

import gc
import shutil
from pathlib import Path

import pytest
import torch

SDXL_ARCH = Path(__file__).resolve().parent / "configs" / "sdxl-base-arch"

pytestmark = [pytest.mark.slow, pytest.mark.arch]


def test_sdxl_base_architecture_in_process_and_through_actgen_build(write_round, arch_build, tmp_path,
                                                                   torch_one_thread):
    from actgen.builder import resident
    from actgen.builder.attention import block_resolutions
    from actgen.builder.config import GuidanceConfig
    from actgen.builder.generator_sdxl import SDXLGenerator, build_sdxl_from_configs
    from actgen.builder.sampler import GuidedSampler
    from actgen.shards.reader import ShardRandomAccess
    from actgen.shards.sources import DIGIT_NAMES
    from actgen.shards.verify import verify

    # 1. The generator in this process, from the shipped configs: random weights drawn directly in
    #    bfloat16 (a float32 UNet would take 10.3 GB on the way), 64x64 images.
    g = build_sdxl_from_configs(SDXL_ARCH, image_size=64, dtype=torch.bfloat16, words=("a", "photo", "of", *DIGIT_NAMES))
    assert isinstance(g, SDXLGenerator) and g.force_zeros_for_empty_prompt
    tokenizer, tokenizer_2 = g.tokenizer, g.tokenizer_2
    assert round(sum(p.numel() for p in g.unet.parameters()) / 1e6) == 2567           # the full UNet
    assert g.image_size == 64 and g.latent_shape == (4, 8, 8) and g.vae_scale_factor == 8
    assert g.vae.config.scaling_factor == 0.13025 and g.time_ids.tolist() == [64, 64, 0, 0, 64, 64]

    # 2. Attention captured at image side / 32 = 2: the ten-layer transformer blocks of
    #    down_blocks.2 (2 attentions) and up_blocks.0 (3), none at the highest resolution.
    sides = block_resolutions(g.unet, 8)
    assert sides == {"down_blocks.0": 8, "down_blocks.1": 4, "down_blocks.2": 2,
                     "up_blocks.0": 2, "up_blocks.1": 4, "up_blocks.2": 8}
    assert g.attention.resolution == 2 and len(g.attention.layers) == 50
    assert {layer.split(".attentions")[0] for layer in g.attention.layers} == {"down_blocks.2", "up_blocks.0"}
    assert not [n for n in g.unet.attn_processors if n.startswith(("down_blocks.0", "up_blocks.2"))]

    # 3. The conditioning: 77 token rows of 768 + 1280 channels and the pooled row; zeros for the
    #    unconditional half; the class token at its position in both tokenizers' ids.
    prompt = "a photo of seven"
    emb = torch.cat([g.embed_unconditional(1), g.embed_prompts([prompt])])
    assert emb.shape == (2, 78, 2048) and not emb[0].any() and emb[1, 77, :1280].any()
    assert g.token_indices(prompt, "seven") == [4]
    assert tokenizer_2(prompt).input_ids[4] == tokenizer(prompt).input_ids[4] == tokenizer("seven").input_ids[1]
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = g.predict_noise(x, 500, emb, capture_attention=True)
    assert eps.shape == (2, 4, 8, 8) and torch.isfinite(eps).all()
    mask = g.attention.mask([[4]])
    assert mask.shape == (1, 2, 2) and (mask > 0).all()

    # 4. Image guidance pulls the render towards its guide (same seed, same noise).
    sampler = GuidedSampler(g, GuidanceConfig(num_steps=2, reference_steps=2, use_mask=False))
    guide = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    guided = sampler.sample([prompt], ["seven"], [7], [3], ["img2img"], guides=guide)
    plain = sampler.sample([prompt], ["seven"], [7], [3], ["txt2img"])
    assert guided.images.shape == (1, 3, 64, 64) and torch.isfinite(guided.images).all()
    assert (guided.latents - guided.guide_latents).norm() < (plain.latents - guided.guide_latents).norm()

    # 5. Saved in the SDXL layout. The UNet in 1 GB shards: safetensors copies a shard into memory
    #    while writing it, and one 5 GB shard would double the peak.
    sdxl = tmp_path / "sdxl"
    g.unet.save_pretrained(sdxl / "unet", safe_serialization=True, max_shard_size="1GB")
    for name in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
        getattr(g, name).save_pretrained(sdxl / name)
    shutil.copytree(SDXL_ARCH / "scheduler", sdxl / "scheduler")
    shutil.copy(SDXL_ARCH / "model_index.json", sdxl / "model_index.json")
    del g, sampler
    gc.collect()

    # 6. actgen-build loads it (picking SDXLGenerator from unet/config.json) and renders every mode.
    #    Two renders of one hard sample, one per batch: the second has a bank entry (bank_scope=worker).
    round_dir, _ = write_round(tmp_path / "rounds" / "1", num_hard=1)
    try:
        for mode in ("txt2img", "img2img", "actgen"):
            out = tmp_path / "shards" / mode
            result = arch_build(round_dir, sdxl, out, "generator.dtype=bfloat16", "budget=2",
                                "output.samples_per_shard=2", f"mode={mode}")
            assert result.exit_code == 0, result.output
            verify(out, class_names=list(DIGIT_NAMES))
            shards = ShardRandomAccess(out)
            samples = [shards.sample(i) for i in range(len(shards))]
            assert len(samples) == 2 and all(s.image.size == (64, 64) for s in samples)
            generator = samples[0].provenance["generator"]
            assert generator["family"] == "sdxl" and generator["dtype"] == "bfloat16" and generator["image_size"] == 64
        guidance = samples[-1].provenance["guidance"]
        assert guidance["mode"] == "actgen" and guidance["adversarial"] and guidance["contrastive"]
    finally:
        # The worker's resident generator (7 GB) would outlive the test in this process.
        resident._RESIDENT.pop("generator", None)
        gc.collect()
        shutil.rmtree(sdxl, ignore_errors=True)             # 5 GB of weights: not left for pytest to keep
