"""SDXL behind the generator interface, on a tiny random SDXL-architecture model (two text encoders,
``text_time`` added conditioning, no attention at the highest resolution, two transformer layers
per attention block): its conditioning matches diffusers' SDXL pipeline, the pooled embedding and
the time ids reach the UNet, attention is captured where it should be, and every mode renders,
through the sampler and through ``actgen-build``'s ``run``."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from actgen.builder.attention import CaptureAttnProcessor, block_resolutions, install_attention_capture
from actgen.builder.bank import MemoryBank
from actgen.builder.config import GuidanceConfig, check_components
from actgen.builder.generator import DiffusersGenerator, Generator
from actgen.builder.tiny import build_tiny_generator
from actgen.builder.generator_sdxl import SDXLGenerator, build_tiny_sdxl_generator
from actgen.builder.loading import load_pretrained, pretrained_family
from actgen.builder.sampler import GuidedSampler

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def xl():
    """Shared by the module: tests must not change its weights or processors."""
    return build_tiny_sdxl_generator(seed=0)


def _pipeline(g: SDXLGenerator, force_zeros: bool = True):
    """diffusers' SDXL pipeline over the generator's own components (the reference)."""
    from diffusers import DDPMScheduler, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(vae=g.vae, text_encoder=g.text_encoder, text_encoder_2=g.text_encoder_2,
                                     tokenizer=g.tokenizer, tokenizer_2=g.tokenizer_2, unet=g.unet,
                                     scheduler=DDPMScheduler.from_config(g.scheduler_config),
                                     force_zeros_for_empty_prompt=force_zeros, add_watermarker=False)


def _guides(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_properties_and_where_attention_is_captured(xl):
    assert isinstance(xl, Generator) and isinstance(xl, DiffusersGenerator) and xl.family == "sdxl"
    assert xl.image_size == 32 and xl.latent_shape == (4, 16, 16) and xl.vae_scale_factor == 2
    assert xl.vae.config.scaling_factor == 0.13025
    # No attention at the highest resolution (16), two transformer layers per attention block at 8.
    assert block_resolutions(xl.unet, 16) == {"down_blocks.0": 16, "down_blocks.1": 8, "up_blocks.0": 8,
                                              "up_blocks.1": 16}
    assert xl.attention.resolution == 8
    assert xl.attention.layers == [f"{block}.attentions.{a}.transformer_blocks.{t}.attn2"
                                   for block, n in (("down_blocks.1", 1), ("up_blocks.0", 2))
                                   for a in range(n) for t in range(2)]
    captured = {n for n, p in xl.unet.attn_processors.items() if isinstance(p, CaptureAttnProcessor)}
    assert captured == {f"{layer}.processor" for layer in xl.attention.layers}
    # Asking for the highest resolution names only the sides that have cross-attention.
    with pytest.raises(ValueError, match=r"attention_resolution=16.*available sides: \[8\]"):
        install_attention_capture(build_tiny_sdxl_generator(seed=0).unet, 16, 16)


def test_conditioning_matches_the_sdxl_pipeline(xl):
    prompts = ["a photo of cat", "a photo of aquarium_fish"]
    emb = xl.embed_prompts(prompts)
    assert emb.shape == (2, 78, 64) and emb.dtype == torch.float32
    with torch.no_grad():
        cond, uncond, pooled, uncond_pooled = _pipeline(xl).encode_prompt(prompts, device="cpu")
    # Rows 0-76: both encoders' penultimate hidden states side by side; row 77: the pooled
    # embedding in its first 32 channels, zeros after them.
    torch.testing.assert_close(emb[:, :77], cond)
    torch.testing.assert_close(emb[:, 77, :32], pooled)
    assert not emb[:, 77, 32:].any()
    # force_zeros_for_empty_prompt (the base model's): the unconditional half is zeros, pooled too.
    assert not uncond.any() and not uncond_pooled.any()
    assert torch.equal(xl.embed_unconditional(2), torch.zeros(2, 78, 64))
    # Without it, the empty prompt through both encoders, as the pipeline's negative prompt.
    plain = build_tiny_sdxl_generator(seed=0, force_zeros_for_empty_prompt=False)
    with torch.no_grad():
        _, uncond, _, uncond_pooled = _pipeline(plain, force_zeros=False).encode_prompt(prompts, device="cpu")
    mine = plain.embed_unconditional(2)
    torch.testing.assert_close(mine[:, :77], uncond)
    torch.testing.assert_close(mine[:, 77, :32], uncond_pooled)
    # The size conditioning: (original, crop top-left, target), as the pipeline builds it.
    ids = _pipeline(xl)._get_add_time_ids((32, 32), (0, 0), (32, 32), torch.float32, text_encoder_projection_dim=32)
    assert torch.equal(xl.time_ids, ids[0])


def test_noise_prediction_is_the_unet_with_added_conditions(xl):
    x = torch.randn(2, *xl.latent_shape, generator=torch.Generator().manual_seed(0))
    emb = torch.cat([xl.embed_unconditional(1), xl.embed_prompts(["a photo of dog"])])
    eps = xl.predict_noise(x, 500, emb)
    with torch.no_grad():
        ref = xl.unet(x, 500, encoder_hidden_states=emb[:, :77],
                      added_cond_kwargs={"text_embeds": emb[:, 77, :32], "time_ids": xl.time_ids.expand(2, 6)}).sample
    torch.testing.assert_close(eps, ref)
    with pytest.raises(ValueError, match=r"SDXL embeddings must be \[N, 78, 64\]"):
        xl.predict_noise(x, 500, emb[:, :77])


def test_pooled_embedding_and_time_ids_change_the_prediction(xl):
    x = torch.randn(1, *xl.latent_shape, generator=torch.Generator().manual_seed(1))
    emb = xl.embed_prompts(["a photo of ship"])
    eps = xl.predict_noise(x, 400, emb)
    pooled = emb.clone()
    pooled[:, 77, :32] += 1.0
    assert (xl.predict_noise(x, 400, pooled) - eps).abs().max() > 1e-4
    # The channels after the pooled embedding are padding: nothing reads them.
    padding = emb.clone()
    padding[:, 77, 32:] += 1.0
    assert torch.equal(xl.predict_noise(x, 400, padding), eps)
    # Other size conditioning, same weights: another prediction (and another weights hash).
    resized = build_tiny_sdxl_generator(seed=0, original_size=(16, 16), crops_coords_top_left=(4, 0))
    assert resized.time_ids.tolist() == [16, 16, 4, 0, 32, 32]
    assert (resized.predict_noise(x, 400, emb) - eps).abs().max() > 1e-4
    assert resized.weights_hash() != xl.weights_hash()
    # The embedding gradient reaches the pooled row (the guidance steps update it).
    e = emb.clone().requires_grad_(True)
    xl.predict_noise(x, 400, e).pow(2).sum().backward()
    assert e.grad[:, 77, :32].abs().sum() > 0 and not e.grad[:, 77, 32:].any()


def test_token_indices_point_into_the_concatenated_embeddings(xl):
    for prompt, name, expected in (("a photo of cat", "cat", [4]),
                                   ("a photo of aquarium_fish", "aquarium_fish", [4, 5, 6])):
        assert xl.token_indices(prompt, name) == expected
        # Both tokenizers split the same way: the positions hold the name in both halves.
        for tokenizer in (xl.tokenizer, xl.tokenizer_2):
            ids = tokenizer(prompt).input_ids
            assert tokenizer.decode([ids[i] for i in expected]).replace(" ", "") == name
    # The captured maps are over the 77 token rows (the pooled row is not a token).
    x = torch.randn(2, *xl.latent_shape, generator=torch.Generator().manual_seed(2))
    xl.predict_noise(x, 700, torch.cat([xl.embed_unconditional(1), xl.embed_prompts(["a photo of cat"])]),
                     capture_attention=True)
    maps = xl.attention.maps()
    assert maps.shape == (2, 8, 8, 77)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 8, 8))
    assert xl.attention.mask([[4]]).min() > 0


def test_every_mode_renders_and_guidance_acts(xl, tiny_guidance_classifier, builder_class_names):
    names = ["cat", "dog", "cat"]
    labels = [builder_class_names.index(n) for n in names]
    prompts = [f"a photo of {n}" for n in names]
    guides = _guides(3)
    bank = MemoryBank(capacity=8, sample_size=8)
    bank.add([labels[0]], torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5)))
    cfg = GuidanceConfig(num_steps=6, reference_steps=6, guidance_steps=3, margin=1e4)
    sampler = GuidedSampler(xl, cfg, tiny_guidance_classifier, bank)
    out = sampler.sample(prompts, names, labels, [1, 2, 3], ["txt2img", "img2img", "actgen"],
                         adversarial=[False, False, True], guides=guides, record_masks=True)
    assert out.images.shape == (3, 3, 32, 32) and torch.isfinite(out.images).all()
    assert torch.isfinite(out.latents).all() and bank.size(labels[0]) == 2
    masks = torch.stack(out.masks)                                     # [steps, B, 1, h, w]
    assert (masks[:, 2] > 1).all() and (masks[:, :2] == 1).all()       # the class-token mask, actgen only

    # Guided renders end closer to their guide than the unguided render of the same seed.
    plain = GuidedSampler(xl, cfg).sample(prompts, names, labels, [1, 2, 3], ["txt2img"] * 3)
    d_guided = (out.latents - out.guide_latents).flatten(1).norm(dim=1)
    d_plain = (plain.latents - out.guide_latents).flatten(1).norm(dim=1)
    assert (d_guided[1:] < d_plain[1:]).all()
    assert torch.equal(out.latents[0], plain.latents[0])               # txt2img: the same image

    # The adversarial term raises the classifier's loss (no image pull, no other term).
    base = dict(num_steps=6, reference_steps=6, guidance_steps=3, guidance_strength=-math.inf, use_mask=False,
                use_contrastive=False, step_size=0.5)
    target = torch.tensor(labels)

    def ce(use_adversarial: bool) -> torch.Tensor:
        s = GuidedSampler(xl, GuidanceConfig(**base, use_adversarial=use_adversarial), tiny_guidance_classifier)
        images = s.sample(prompts, names, labels, [7, 8, 9], ["actgen"] * 3, adversarial=[True] * 3,
                          guides=guides).images
        with torch.no_grad():
            return F.cross_entropy(tiny_guidance_classifier.logits(images), target, reduction="none")

    assert (ce(True) > ce(False)).all()


def test_vae_upcast_and_latent_statistics():
    from diffusers import AutoencoderKL

    xl = build_tiny_sdxl_generator(seed=0)
    # force_upcast: a float16 generator keeps its VAE in float32 (SDXL's VAE overflows in float16);
    # bfloat16 and float32 run as they are. Stable Diffusion's path never upcasts.
    assert xl._vae_dtype_for(xl.vae, torch.float16) == torch.float32
    assert xl._vae_dtype_for(xl.vae, torch.bfloat16) == torch.bfloat16
    assert DiffusersGenerator._vae_dtype_for(xl, xl.vae, torch.float16) == torch.float16
    # A VAE config with latents_mean/std: latents are standardised with them, as diffusers' pipelines do.
    mean, std = [0.1, -0.2, 0.3, 0.0], [1.5, 0.5, 2.0, 1.0]
    config = {k: v for k, v in xl.vae.config.items() if not k.startswith("_")}   # _use_default_values would undo them
    vae = AutoencoderKL.from_config({**config, "latents_mean": mean, "latents_std": std})
    vae.load_state_dict(xl.vae.state_dict())
    stats = SDXLGenerator(xl.unet, vae, xl.text_encoder, xl.text_encoder_2, xl.tokenizer, xl.tokenizer_2,
                          xl.scheduler_config, attention_resolution=8)
    images = _guides(2, seed=4)
    z = xl.encode_image(images, [torch.Generator().manual_seed(s) for s in (1, 2)])
    z_stats = stats.encode_image(images, [torch.Generator().manual_seed(s) for s in (1, 2)])
    m, s = torch.tensor(mean).view(1, 4, 1, 1), torch.tensor(std).view(1, 4, 1, 1)
    torch.testing.assert_close(z_stats, (z / 0.13025 - m) * 0.13025 / s)
    torch.testing.assert_close(stats.decode_latents(z_stats), xl.decode_latents(z), atol=1e-5, rtol=1e-5)


def test_save_load_dispatch_and_hash(xl, tmp_path):
    xl.save_pretrained(tmp_path / "xl")
    index = json.loads((tmp_path / "xl" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and index["force_zeros_for_empty_prompt"] is True
    assert pretrained_family(str(tmp_path / "xl")) == "sdxl"
    loaded = load_pretrained(str(tmp_path / "xl"), device="cpu", attention_resolution=8, local_files_only=True)
    assert type(loaded) is SDXLGenerator and loaded.tokenizer_2.pad_token == "!"
    assert loaded.weights_hash() == xl.weights_hash()
    assert loaded.attention.layers == xl.attention.layers
    x = torch.randn(2, *xl.latent_shape, generator=torch.Generator().manual_seed(0))
    emb = torch.cat([xl.embed_unconditional(1), xl.embed_prompts(["a photo of cat"])])
    torch.testing.assert_close(loaded.predict_noise(x, 500, emb), xl.predict_noise(x, 500, emb))

    # The hash covers the second encoder, the second tokenizer and the unconditional-embedding rule.
    other = build_tiny_sdxl_generator(seed=0)
    torch.nn.init.zeros_(other.text_encoder_2.text_projection.weight)
    other.weights_changed()
    assert other.weights_hash() != xl.weights_hash()
    assert build_tiny_sdxl_generator(seed=0, force_zeros_for_empty_prompt=False).weights_hash() != xl.weights_hash()
    index["force_zeros_for_empty_prompt"] = False
    (tmp_path / "xl" / "model_index.json").write_text(json.dumps(index))
    reloaded = load_pretrained(str(tmp_path / "xl"), device="cpu", attention_resolution=8)
    assert not reloaded.force_zeros_for_empty_prompt and reloaded.embed_unconditional(1).any()

    # Each class refuses the other family, naming the file that decides it.
    with pytest.raises(ValueError, match=r"unet/config.json is SDXL \(SDXLGenerator\)'s"):
        DiffusersGenerator.from_pretrained(str(tmp_path / "xl"), device="cpu")
    build_tiny_generator(seed=0).save_pretrained(tmp_path / "sd")
    with pytest.raises(ValueError, match=r"Stable Diffusion 1.x/2.x \(DiffusersGenerator\)'s, not SDXL"):
        SDXLGenerator.from_pretrained(str(tmp_path / "sd"), device="cpu")
    assert type(load_pretrained(str(tmp_path / "sd"), device="cpu", attention_resolution=8)) is DiffusersGenerator
    with pytest.raises(ValueError, match="use SDXLGenerator"):
        DiffusersGenerator(xl.unet, xl.vae, xl.text_encoder, xl.tokenizer, xl.scheduler_config)

    # A missing SDXL component is named, as the SD ones are.
    shutil.rmtree(tmp_path / "xl" / "tokenizer_2")
    with pytest.raises(FileNotFoundError, match=r"xl: missing component 'tokenizer_2/' \(an SDXL directory"):
        check_components(tmp_path / "xl")


def test_actgen_build_renders_every_mode_on_an_sdxl_folder(build_config, xl, tmp_path):
    from actgen.builder.pipeline import run
    from actgen.shards.reader import ShardRandomAccess
    from actgen.shards.sources import DIGIT_NAMES
    from actgen.shards.verify import verify

    xl.save_pretrained(tmp_path / "xl")
    for mode in ("txt2img", "img2img", "actgen"):
        out = tmp_path / mode
        run(build_config(f"generator.path={tmp_path / 'xl'}", "generator.attention_resolution=8", f"mode={mode}",
                         "budget=2", "output.contact_sheet=0", output=out))
        verify(out, class_names=list(DIGIT_NAMES))
        data = ShardRandomAccess(out)
        for i in range(len(data)):
            sample = data.sample(i)
            assert sample.image.size == (32, 32)
            generator = sample.provenance["generator"]
            assert generator["family"] == "sdxl" and generator["weights_sha256"] == xl.weights_hash()
            assert sample.provenance["guidance"]["mode"] == mode


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")   # diffusers' own call
def test_an_uncached_hub_id_is_named_without_touching_the_network():
    with pytest.raises(RuntimeError, match=r"nobody/no-such-sdxl: cannot load component 'unet'"):
        load_pretrained("nobody/no-such-sdxl", device="cpu", local_files_only=True)
