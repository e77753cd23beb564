"""The generator interface on the tiny random SD-architecture model."""
from __future__ import annotations

import shutil

import pytest
import torch

from actgen.builder.generator import DiffusersGenerator, Generator, find_token_indices
from actgen.builder.tiny import build_tiny_generator


def test_tiny_generator_properties(tiny_generator):
    g = tiny_generator
    assert isinstance(g, Generator)
    assert g.image_size == 32 and g.vae_scale_factor == 2 and g.latent_shape == (4, 16, 16)
    assert g.dtype == torch.float32 and g.device.type == "cpu"
    assert g.steps_offset == 1 and g.alphas_cumprod.shape == (1000,)


def test_token_indices_single_and_multi_token_names(tiny_generator):
    tok = tiny_generator.tokenizer
    # [bos, a, photo, of, cat, eos]: a one-token name sits at index 4, as in the paper code.
    assert tiny_generator.token_indices("a photo of cat", "cat") == [4]
    # "aquarium_fish" is three tokens (aquarium, _, fish); all of them are returned.
    idx = tiny_generator.token_indices("a photo of aquarium_fish", "aquarium_fish")
    assert idx == [4, 5, 6]
    ids = tok("a photo of aquarium_fish").input_ids
    assert tok.decode([ids[i] for i in idx]).replace(" ", "") == "aquarium_fish"
    # A word outside the tiny vocabulary falls apart into character tokens.
    idx = find_token_indices(tok, "axolotl in a photo", "axolotl")
    assert idx == list(range(1, 1 + len("axolotl")))
    with pytest.raises(ValueError, match="'zebra'.*not found"):
        tiny_generator.token_indices("a photo of cat", "zebra")


def test_embeddings_encode_decode(tiny_generator):
    g = tiny_generator
    emb = g.embed_prompts(["a photo of cat", "a photo of dog", "a photo of cat"])
    assert emb.shape == (3, 77, 32) and emb.dtype == torch.float32
    assert torch.equal(emb[0], emb[2]) and not torch.equal(emb[0], emb[1])
    assert g.embed_unconditional(2).shape == (2, 77, 32)

    images = torch.rand(2, 3, 32, 32) * 2 - 1
    z1 = g.encode_image(images, [torch.Generator().manual_seed(s) for s in (1, 2)])
    z2 = g.encode_image(images, [torch.Generator().manual_seed(s) for s in (1, 3)])
    assert z1.shape == (2, 4, 16, 16)
    assert torch.equal(z1[0], z2[0]) and not torch.equal(z1[1], z2[1])   # per-row generators
    out = g.decode_latents(z1.requires_grad_())
    assert out.shape == (2, 3, 32, 32)
    out.sum().backward()                                                   # differentiable
    assert z1.grad is not None and z1.grad.abs().sum() > 0


def test_weights_hash_is_stable_and_sensitive(tiny_generator):
    h = tiny_generator.weights_hash()
    assert len(h) == 64 and h == build_tiny_generator(seed=0).weights_hash()
    assert h != build_tiny_generator(seed=1).weights_hash()


def test_save_and_load_round_trip(tiny_generator, tmp_path):
    tiny_generator.save_pretrained(tmp_path / "sd")
    loaded = DiffusersGenerator.from_pretrained(str(tmp_path / "sd"), device="cpu", attention_resolution=8,
                                                local_files_only=True)
    assert loaded.weights_hash() == tiny_generator.weights_hash()
    assert loaded.attention.layers == tiny_generator.attention.layers
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    emb = tiny_generator.embed_prompts(["a photo of cat", "a photo of dog"])
    assert torch.allclose(loaded.predict_noise(x, 500, emb), tiny_generator.predict_noise(x, 500, emb), atol=1e-6)
    assert loaded.token_indices("a photo of aquarium_fish", "aquarium_fish") == [4, 5, 6]

    shutil.rmtree(tmp_path / "sd" / "vae")
    with pytest.raises(FileNotFoundError, match=r"sd: missing component 'vae/'"):
        DiffusersGenerator.from_pretrained(str(tmp_path / "sd"), device="cpu")


def test_half_precision_on_cpu_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="float16.*cpu"):
        DiffusersGenerator.from_pretrained(str(tmp_path), device="cpu", dtype="float16")
    with pytest.raises(ValueError, match="dtype='fp8'"):
        DiffusersGenerator.from_pretrained(str(tmp_path), device="cpu", dtype="fp8")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_half_precision_on_gpu_renders(tiny_generator, tiny_guidance_classifier, tmp_path):
    import copy

    from actgen.builder.config import GuidanceConfig
    from actgen.builder.bank import MemoryBank
    from actgen.builder.sampler import GuidanceClassifier, GuidedSampler

    tiny_generator.save_pretrained(tmp_path / "sd")
    g = DiffusersGenerator.from_pretrained(str(tmp_path / "sd"), device="cuda", attention_resolution=8,
                                           local_files_only=True)
    assert g.dtype == torch.float16 and g.device.type == "cuda"
    clf = copy.deepcopy(tiny_guidance_classifier)
    clf = GuidanceClassifier(clf.model.cuda(), clf.input_size, clf.mean, clf.std)
    bank = MemoryBank(8, 8)
    bank.add([0], torch.randn(1, 4, 16, 16))
    sampler = GuidedSampler(g, GuidanceConfig(num_steps=6, reference_steps=6, guidance_steps=3, margin=1e4),
                            clf, bank)
    names = ["cat", "aquarium_fish"]
    out = sampler.sample([f"a photo of {n}" for n in names], names, [0, 3], [1, 2], ["actgen", "actgen"],
                         adversarial=[True, True], guides=torch.rand(2, 3, 32, 32) * 2 - 1)
    assert out.images.shape == (2, 3, 32, 32) and out.images.dtype == torch.float32
    assert torch.isfinite(out.latents).all() and bank.size(0) == 2
