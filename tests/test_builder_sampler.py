"""The guided sampler: each mechanism shown by its effect on the tiny random generator."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from actgen.builder.bank import MemoryBank
from actgen.builder.batch_transform import GuidedRenderer
from actgen.builder.config import GuidanceConfig
from actgen.builder.tiny import build_tiny_generator
from actgen.builder.sampler import GuidedSampler, attention_mask, normalize_gradient
from actgen.builder.solver import gamma_schedule, leading_timesteps, posterior_coefficients


INF = float("inf")
BUILDER_CLASS_NAMES: list[str] = []     # the tiny classifier's classes, from conftest's fixture


@pytest.fixture(autouse=True)
def _class_names(builder_class_names):
    BUILDER_CLASS_NAMES[:] = builder_class_names


# Few steps, the guidance schedule given at that count so nothing is rescaled.
FAST = dict(num_steps=6, reference_steps=6, guidance_steps=3)


def _guides(b: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _render(sampler, names, seeds, modes, adversarial=None, guides=None, labels=None, **kw):
    labels = labels if labels is not None else [BUILDER_CLASS_NAMES.index(n) for n in names]
    return sampler.sample([f"a photo of {n}" for n in names], names, labels, seeds, modes,
                          adversarial=adversarial, guides=guides, **kw)


# -- pure pieces --------------------------------------------------------------------------------


def test_leading_timesteps_match_diffusers():
    for steps in (40, 7):
        ref = DDPMScheduler(num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
        ref.set_timesteps(steps)
        assert leading_timesteps(1000, steps, 1) == ref.timesteps.tolist()
    assert leading_timesteps(1000, 40, 1)[:2] == [976, 951] and leading_timesteps(1000, 40, 1)[-1] == 1


def test_gamma_schedule_and_scaling():
    cfg = GuidanceConfig()
    assert cfg.scaled_strength == 12.5 and cfg.scaled_guidance_steps == 10
    g = gamma_schedule(40, cfg.scaled_strength)
    for i, v in {0: 1.0, 10: 0.924, 12: 0.622, 13: 0.378, 16: 0.029}.items():
        assert g[i] == pytest.approx(v, abs=1e-3)
    assert all(a > b for a, b in zip(g, g[1:]))
    half = GuidanceConfig(num_steps=20)
    assert half.scaled_strength == 6.25 and half.scaled_guidance_steps == 5
    assert gamma_schedule(3, INF) == [1.0, 1.0, 1.0] and gamma_schedule(3, -INF) == [0.0, 0.0, 0.0]


def test_posterior_coefficients_last_step_lands_on_x0():
    c0, ct, sigma = posterior_coefficients(0.99, 1.0)
    assert (c0, ct, sigma) == (pytest.approx(1.0), 0.0, 0.0)
    c0, ct, sigma = posterior_coefficients(0.5, 0.6)
    # Posterior mean weights sum to one on the data scale when x_t = √ᾱ_t x0: c0 + ct√ᾱ_t = √ᾱ_t'.
    assert c0 + ct * math.sqrt(0.5) == pytest.approx(math.sqrt(0.6))
    assert sigma > 0


def test_config_validation_and_structured_loading():
    with pytest.raises(ValueError, match="guidance.mask='edges'"):
        GuidanceConfig(mask="edges")
    with pytest.raises(ValueError, match="guidance.step_size=-1"):
        GuidanceConfig(step_size=-1)
    with pytest.raises(ValueError, match="mask_threshold"):
        GuidanceConfig(mask_threshold=0.5)
    schema = OmegaConf.structured(GuidanceConfig)
    cfg = OmegaConf.to_object(OmegaConf.merge(schema, OmegaConf.from_dotlist(
        ["margin=200", "mask=foreground", "mask_threshold=0.3", "guidance_strength=.inf"])))
    assert cfg.margin == 200 and cfg.mask_threshold == 0.3 and cfg.guidance_strength == INF
    with pytest.raises(ConfigKeyError, match="marginn"):
        OmegaConf.merge(schema, {"marginn": 1})
    with pytest.raises(ValidationError, match="grad_norm"):
        OmegaConf.merge(schema, {"grad_norm": "l1"})


def test_normalize_gradient_variants():
    g_u = torch.randn(2, 77, 8)
    g_c = torch.randn(2, 77, 8)
    g_c[1] = 0                                                   # a sample without a loss
    tu, tc = normalize_gradient(g_u, g_c, "token")
    assert torch.allclose(tu.norm(dim=1), torch.ones(2, 8))      # unit norm over tokens, per channel
    assert torch.equal(tc[1], torch.zeros(77, 8))
    gu, gc = normalize_gradient(g_u, g_c, "global")
    per_sample = (gu.pow(2).sum((1, 2)) + gc.pow(2).sum((1, 2))).sqrt()
    assert torch.allclose(per_sample, torch.ones(2))             # unit norm per sample, both halves
    assert torch.allclose(gu[0] / gu[0].norm(), g_u[0] / g_u[0].norm())   # direction kept


def test_attention_mask_variants_on_synthetic_maps():
    attn = torch.rand(2, 8, 8)
    cum = attention_mask(attn, attn * 3, "cumulative", (16, 16))
    assert cum.shape == (2, 1, 16, 16) and cum.min() >= 1.0
    fg = attention_mask(attn, attn * 3, "foreground", (8, 8))
    assert torch.allclose(fg.flatten(1).min(1).values, torch.zeros(2))
    assert torch.allclose(fg.flatten(1).max(1).values, torch.ones(2))
    binary = attention_mask(attn, attn, "foreground", (16, 16), threshold=0.5)
    assert set(binary.unique().tolist()) <= {0.0, 1.0}


def test_memory_bank_fifo_and_draws():
    bank = MemoryBank(capacity=3, sample_size=2)
    bank.add([0, 0, 1, 0, 0], torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 4, 2, 2))
    assert bank.size(0) == 3 and bank.size(1) == 1 and bank.size(7) == 0 and len(bank) == 4
    assert bank.state_dict()[0][:, 0, 0, 0].tolist() == [1.0, 3.0, 4.0]      # entry 0 evicted first
    draw = bank.sample(0, torch.Generator().manual_seed(0))
    assert draw.shape == (2, 4, 2, 2) and draw.dtype == torch.float32
    assert set(draw[:, 0, 0, 0].tolist()) <= {1.0, 3.0, 4.0} and len(set(draw[:, 0, 0, 0].tolist())) == 2
    assert bank.sample(7, torch.Generator()) is None
    restored = MemoryBank(3, 2)
    restored.load_state_dict(bank.state_dict())
    assert torch.equal(restored.state_dict()[0], bank.state_dict()[0])


# -- the sampler --------------------------------------------------------------------------------


def test_gamma_one_follows_the_guide_and_gamma_zero_ignores_it(tiny_generator):
    names, seeds, guides = ["cat", "dog"], [11, 12], _guides(2)
    held = GuidedSampler(tiny_generator, GuidanceConfig(**FAST, guidance_strength=INF))
    out = _render(held, names, seeds, ["img2img"] * 2, guides=guides)
    # Every step puts x on x^g; the last DDPM step maps x^g onto z_g exactly (ᾱ_prev = 1).
    assert torch.allclose(out.latents, out.guide_latents, atol=1e-5)
    # z_g is a VAE posterior sample of the guide (x scaling factor): standardised, it is N(0, 1) noise.
    with torch.no_grad():
        dist = tiny_generator.vae.encode(guides).latent_dist
    r = (out.guide_latents / tiny_generator.vae.config.scaling_factor - dist.mean) / dist.std
    assert abs(r.mean()) < 0.1 and 0.9 < r.std() < 1.1

    free = GuidedSampler(tiny_generator, GuidanceConfig(**FAST, guidance_strength=-INF))
    out0 = _render(free, names, seeds, ["img2img"] * 2, guides=guides)
    plain = _render(free, names, seeds, ["txt2img"] * 2)
    assert torch.equal(out0.latents, plain.latents)          # same seed, guide has no say
    assert (out0.latents - out0.guide_latents).flatten(1).norm(dim=1).min() > 10


def test_default_gamma_pulls_towards_the_guide(tiny_generator):
    names, seeds, guides = ["cat", "dog"], [11, 12], _guides(2)
    sampler = GuidedSampler(tiny_generator, GuidanceConfig(num_steps=8, use_mask=False))
    guided = _render(sampler, names, seeds, ["img2img"] * 2, guides=guides)
    plain = _render(sampler, names, seeds, ["txt2img"] * 2)
    d_guided = (guided.latents - guided.guide_latents).flatten(1).norm(dim=1)
    d_plain = (plain.latents - guided.guide_latents).flatten(1).norm(dim=1)
    assert (d_guided < d_plain).all()


def test_mask_variants_differ_as_documented(tiny_generator):
    names, seeds, guides = ["cat", "aquarium_fish"], [3, 4], _guides(2, seed=1)
    base = dict(**FAST, use_contrastive=False, use_adversarial=False)
    runs = {}
    for kind, thr in (("cumulative", None), ("foreground", None), ("foreground", 0.5)):
        sampler = GuidedSampler(tiny_generator, GuidanceConfig(**base, mask=kind, mask_threshold=thr))
        runs[(kind, thr)] = _render(sampler, names, seeds, ["actgen", "img2img"], guides=guides, record_masks=True)

    cum = torch.stack(runs[("cumulative", None)].masks)               # [steps, B, 1, h, w]
    assert cum.shape == (6, 2, 1, 16, 16)
    assert (cum[:, 0] > 1).all()                                       # 1 + running attention sum
    assert (cum[1:, 0] >= cum[:-1, 0] - 1e-6).all() and (cum[-1, 0] > cum[0, 0]).all()   # grows
    assert (cum[:, 1] == 1).all()                                      # img2img: no mask

    fg = torch.stack(runs[("foreground", None)].masks)[:, 0].flatten(1)
    assert torch.allclose(fg.min(1).values, torch.zeros(6), atol=1e-6)
    assert torch.allclose(fg.max(1).values, torch.ones(6), atol=1e-6)
    thr = torch.stack(runs[("foreground", 0.5)].masks)[:, 0]
    assert set(thr.unique().tolist()) == {0.0, 1.0}

    # The mask changes the actgen sample only; the img2img sample in the same batch is untouched.
    a, b = runs[("cumulative", None)].latents, runs[("foreground", None)].latents
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1], atol=1e-5)


def test_adversarial_term_raises_the_classifier_loss(tiny_generator, tiny_guidance_classifier):
    names = ["cat", "dog", "ship", "aquarium_fish"]
    labels = torch.tensor([BUILDER_CLASS_NAMES.index(n) for n in names])
    seeds, guides = [21, 22, 23, 24], _guides(4, seed=2)
    # No image pull (γ = 0) and no other term, so the classifier loss is the only difference.
    base = dict(**FAST, guidance_strength=-INF, use_mask=False, use_contrastive=False, step_size=0.5)

    def ce(use_adversarial):
        sampler = GuidedSampler(tiny_generator, GuidanceConfig(**base, use_adversarial=use_adversarial),
                                tiny_guidance_classifier)
        out = _render(sampler, names, seeds, ["actgen"] * 4, adversarial=[True] * 4, guides=guides)
        with torch.no_grad():
            return F.cross_entropy(tiny_guidance_classifier.logits(out.images), labels, reduction="none")

    without, with_adv = ce(False), ce(True)
    assert with_adv.mean() > without.mean() + 1e-3
    assert (with_adv > without).all()


def test_adversarial_chunks_bound_the_decode_and_change_no_image(tiny_generator, tiny_guidance_classifier,
                                                                 monkeypatch):
    names = ["cat", "dog", "ship", "aquarium_fish", "cat"]
    seeds, guides = [41, 42, 43, 44, 45], _guides(5, seed=4)
    decoded: list[int] = []
    real_decode = tiny_generator.decode_latents

    def counting_decode(latents):
        if torch.is_grad_enabled():
            decoded.append(latents.shape[0])
        return real_decode(latents)

    monkeypatch.setattr(tiny_generator, "decode_latents", counting_decode)
    outs = {}
    for chunk in (1, 2, 8):
        decoded.clear()
        sampler = GuidedSampler(tiny_generator, GuidanceConfig(**FAST, step_size=0.5, adversarial_chunk=chunk),
                                tiny_guidance_classifier)
        outs[chunk] = _render(sampler, names, seeds, ["actgen"] * 5, adversarial=[True] * 5, guides=guides).latents
        # Every guided step decodes the 5 adversarial rows in chunks of at most `chunk`.
        steps = FAST["guidance_steps"]
        assert sum(decoded) == 5 * steps and max(decoded) == min(chunk, 5), (chunk, decoded)
    assert torch.allclose(outs[1], outs[8], atol=1e-4) and torch.allclose(outs[2], outs[8], atol=1e-4)


def test_rows_without_a_loss_stay_out_of_the_gradient_graph(tiny_generator, tiny_guidance_classifier, monkeypatch):
    names = ["cat", "dog", "ship", "aquarium_fish"]
    seeds, guides = [51, 52, 53, 54], _guides(4, seed=5)
    modes = ["txt2img", "actgen", "img2img", "actgen"]
    calls: list[tuple[int, bool]] = []
    real_predict = tiny_generator.predict_noise

    def recording_predict(latents, t, embeddings, capture_attention=False):
        calls.append((latents.shape[0], embeddings.requires_grad))
        return real_predict(latents, t, embeddings, capture_attention=capture_attention)

    sampler = GuidedSampler(tiny_generator, GuidanceConfig(**FAST, step_size=0.5), tiny_guidance_classifier)
    mixed = _render(sampler, names, seeds, modes, adversarial=[False, True, False, True], guides=guides)
    monkeypatch.setattr(tiny_generator, "predict_noise", recording_predict)
    _render(sampler, names, seeds, modes, adversarial=[False, True, False, True], guides=guides)
    monkeypatch.undo()
    # Guided steps: the two actgen rows (x2 CFG halves) with autograd, the other two without.
    with_grad = [n for n, g in calls if g]
    assert with_grad == [4] * FAST["guidance_steps"]
    without = [n for n, g in calls if not g]
    assert without == [4] * FAST["guidance_steps"] + [8] * (FAST["num_steps"] - FAST["guidance_steps"])
    # Each row renders as it would alone: splitting the batch changes nothing.
    for k in range(4):
        alone = _render(sampler, names[k:k + 1], seeds[k:k + 1], modes[k:k + 1],
                        adversarial=[False, True, False, True][k:k + 1], guides=guides[k:k + 1])
        assert torch.allclose(alone.latents[0], mixed.latents[k], atol=1e-4), k


def test_contrastive_term_raises_the_distance_to_the_bank(tiny_generator):
    plain = GuidedSampler(tiny_generator, GuidanceConfig(**FAST))
    others = _render(plain, ["cat"] * 6, list(range(100, 106)), ["txt2img"] * 6)
    bank = MemoryBank(capacity=16, sample_size=16)
    bank.add([0] * 6, others.latents)
    names, seeds, guides = ["cat"] * 3, [31, 32, 33], _guides(3, seed=3)
    base = dict(**FAST, guidance_strength=-INF, use_mask=False, use_adversarial=False, step_size=0.5)

    def distance(**kw):
        sampler = GuidedSampler(tiny_generator, GuidanceConfig(**base, **kw), bank=copy.deepcopy(bank))
        out = _render(sampler, names, seeds, ["actgen"] * 3, guides=guides)
        return torch.cdist(out.latents.flatten(1), others.latents.flatten(1)).mean(1), out

    without, out_without = distance(use_contrastive=False)
    active, _ = distance(margin=1e4)                   # hinge active for every bank entry
    assert (active > without).all()
    # Beyond the margin the hinge is flat: no gradient, the same image.
    _, out_inactive = distance(margin=1.0)
    assert torch.equal(out_inactive.latents, out_without.latents)


def test_bank_collects_guided_samples_only(tiny_generator):
    bank = MemoryBank(capacity=8, sample_size=8)
    sampler = GuidedSampler(tiny_generator, GuidanceConfig(**FAST), bank=bank)
    out = _render(sampler, ["cat", "dog", "cat"], [1, 2, 3], ["actgen", "txt2img", "img2img"], guides=_guides(3))
    assert bank.size(0) == 2 and bank.size(1) == 0
    assert torch.allclose(bank.state_dict()[0].float(), out.latents[[0, 2]], atol=1e-2, rtol=1e-3)


def test_same_seed_same_image_whatever_the_batch(tiny_generator, tiny_guidance_classifier):
    names, modes = ["cat", "dog", "aquarium_fish"], ["actgen", "img2img", "actgen"]
    adversarial, seeds, guides = [True, False, True], [5, 6, 7], _guides(3, seed=4)
    others = _render(GuidedSampler(tiny_generator, GuidanceConfig(**FAST)), ["cat", "dog", "aquarium_fish"],
                     [50, 51, 52], ["txt2img"] * 3)
    bank = MemoryBank(8, 8)
    bank.add([0, 1, 3], others.latents)

    def sampler():
        return GuidedSampler(tiny_generator, GuidanceConfig(**FAST, margin=1e4), tiny_guidance_classifier,
                             copy.deepcopy(bank))

    first = _render(sampler(), names, seeds, modes, adversarial, guides)
    again = _render(sampler(), names, seeds, modes, adversarial, guides)
    assert torch.equal(first.images, again.images) and torch.equal(first.latents, again.latents)
    for k in range(3):
        alone = _render(sampler(), names[k:k + 1], seeds[k:k + 1], modes[k:k + 1], adversarial[k:k + 1],
                        guides[k:k + 1])
        # Batched kernels may round differently; nothing else may differ.
        assert torch.allclose(alone.latents, first.latents[k:k + 1], atol=1e-5)
        assert torch.allclose(alone.images, first.images[k:k + 1], atol=1e-4)
    other_seeds = _render(sampler(), names, [8, 9, 10], modes, adversarial, guides)
    assert (other_seeds.latents - first.latents).flatten(1).norm(dim=1).min() > 1


def test_input_checks(tiny_generator):
    sampler = GuidedSampler(tiny_generator, GuidanceConfig(**FAST))
    with pytest.raises(ValueError, match="no classifier"):
        _render(sampler, ["cat"], [1], ["actgen"], adversarial=[True], guides=_guides(1))
    with pytest.raises(ValueError, match="guides is None"):
        _render(sampler, ["cat"], [1], ["img2img"])
    with pytest.raises(ValueError, match=r"modes\[0\]='dream'"):
        _render(sampler, ["cat"], [1], ["dream"])
    with pytest.raises(ValueError, match=r"guides must be \[1, 3, 32, 32\]"):
        _render(sampler, ["cat"], [1], ["img2img"], guides=torch.zeros(1, 3, 64, 64))


# -- the Ray batch transform --------------------------------------------------------------------


def test_guided_renderer_batch_transform(tiny_guidance_classifier):
    cfg = GuidanceConfig(**FAST)
    renderer = GuidedRenderer(lambda: build_tiny_generator(seed=0), BUILDER_CLASS_NAMES, cfg,
                              classifier_factory=lambda: tiny_guidance_classifier)
    rng = np.random.default_rng(0)
    batch = {
        "label": np.array([0, 3, 1]), "seed": np.array([7, 8, 9]),
        "mode": np.array(["actgen", "actgen", "txt2img"]), "adversarial": np.array([True, False, False]),
        "guide": rng.integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8),       # resized to 32
        "source_id": np.array(["a", "b", "c"]),
    }
    out = renderer(batch)
    assert set(out) == {"label", "seed", "mode", "adversarial", "source_id", "image", "prompt"}
    assert out["image"].shape == (3, 32, 32, 3) and out["image"].dtype == np.uint8
    assert out["prompt"].tolist() == ["a photo of cat", "a photo of aquarium_fish", "a photo of dog"]
    assert renderer.bank.size(0) == 1 and renderer.bank.size(3) == 1

    fresh = GuidedRenderer(lambda: build_tiny_generator(seed=0), BUILDER_CLASS_NAMES, cfg,
                           classifier_factory=lambda: tiny_guidance_classifier)
    single = fresh({k: v[1:2] for k, v in batch.items()})
    diff = np.abs(single["image"][0].astype(int) - out["image"][1].astype(int))
    assert diff.max() <= 1                               # float rounding may flip a last bit
    with pytest.raises(ValueError, match="label 9 is outside the 4 class names"):
        renderer({**batch, "label": np.array([9, 0, 0])})


def test_cheap_adversarial_decode_is_smaller_and_still_raises_the_classifier_loss(
        tiny_generator, tiny_guidance_classifier, monkeypatch):
    names = ["cat", "dog", "ship", "aquarium_fish"]
    labels = torch.tensor([BUILDER_CLASS_NAMES.index(n) for n in names])
    seeds, guides = [21, 22, 23, 24], _guides(4, seed=2)
    base = dict(**FAST, guidance_strength=-INF, use_mask=False, use_contrastive=False, step_size=0.5)
    shapes: list[tuple[int, ...]] = []
    real_decode = tiny_generator.decode_latents

    def recording_decode(latents):
        if torch.is_grad_enabled():
            shapes.append(tuple(latents.shape[1:]))
        return real_decode(latents)

    monkeypatch.setattr(tiny_generator, "decode_latents", recording_decode)

    def ce(**kw):
        sampler = GuidedSampler(tiny_generator, GuidanceConfig(**base, **kw), tiny_guidance_classifier)
        out = _render(sampler, names, seeds, ["actgen"] * 4, adversarial=[True] * 4, guides=guides)
        with torch.no_grad():
            return F.cross_entropy(tiny_guidance_classifier.logits(out.images), labels, reduction="none")

    without = ce(use_adversarial=False)
    assert shapes == []
    # The tiny VAE halves the side: a 16x16 decode is of 8x8 latents (the full one of 16x16).
    cheap = ce(adversarial_decode_size=16)
    assert set(shapes) == {(4, 8, 8)} and len(shapes) == FAST["guidance_steps"]
    assert cheap.mean() > without.mean() + 1e-3
    shapes.clear()
    ce(adversarial_decode_size=32)                         # the generator's own size: the method
    assert set(shapes) == {(4, 16, 16)}
    with pytest.raises(ValueError, match="adversarial_decode_size=15: must be a multiple of the VAE's"):
        ce(adversarial_decode_size=15)
    with pytest.raises(ValueError, match="adversarial_decode_size=0"):
        GuidanceConfig(adversarial_decode_size=0)


# -- fidelity options: the margin scaled to the latent, repulsion within a batch ------------------


def test_margin_scaled_to_the_latent_size():
    cfg = GuidanceConfig(margin=100.0, margin_scale="latent_dim")
    assert cfg.effective_margin(4 * 64 * 64) == pytest.approx(100.0)          # Stable Diffusion: as given
    assert cfg.effective_margin(3 * 8 * 8) == pytest.approx(100.0 * (192 / 16384) ** 0.5)   # 10.8
    assert GuidanceConfig(margin=100.0).effective_margin(192) == 100.0       # absolute: unchanged
    with pytest.raises(ValueError, match="margin_scale"):
        GuidanceConfig(margin_scale="pixels")


def test_scaled_margin_lets_go_where_the_absolute_one_holds(tiny_generator):
    plain = GuidedSampler(tiny_generator, GuidanceConfig(**FAST))
    others = _render(plain, ["cat"] * 4, list(range(200, 204)), ["txt2img"] * 4)
    bank = MemoryBank(capacity=8, sample_size=8)
    bank.add([0] * 4, others.latents)
    base = dict(**FAST, guidance_strength=-INF, use_mask=False, use_adversarial=False, step_size=0.5)
    guides = _guides(2, seed=9)

    def render(**kw):
        sampler = GuidedSampler(tiny_generator, GuidanceConfig(**base, **kw), bank=copy.deepcopy(bank))
        return _render(sampler, ["cat"] * 2, [41, 42], ["actgen"] * 2, guides=guides).latents

    # The tiny latent (4x16x16) scales ρ by sqrt(1024 / 16384) = 1/4. Its renders' x̂0 lie about
    # 260-300 from the bank: ρ = 800 holds every pair in the hinge, ρ / 4 = 200 none of them.
    assert others.latents[0].numel() == 1024
    off = render(use_contrastive=False)
    assert not torch.equal(render(margin=800.0), off)
    assert torch.equal(render(margin=800.0, margin_scale="latent_dim"), off)
    assert torch.equal(render(margin=200.0), off)


def test_renders_of_one_class_in_a_batch_repel_each_other(tiny_generator):
    # An empty bank: without repulsion two renders of the same guide see nothing to push from;
    # with it, each is pushed from the other and they end further apart.
    guide = _guides(1, seed=5).repeat(2, 1, 1, 1)
    base = dict(**FAST, guidance_strength=-INF, use_mask=False, use_adversarial=False, step_size=0.5, margin=1e4)

    def pair(**kw):
        sampler = GuidedSampler(tiny_generator, GuidanceConfig(**base, **kw), bank=MemoryBank(8, 8))
        out = _render(sampler, ["cat", "cat"], [61, 62], ["actgen"] * 2, guides=guide).latents
        return out, float((out[0] - out[1]).norm())

    alone, d_alone = pair()
    together, d_together = pair(repel_within_batch=True)
    assert d_together > d_alone
    # Rows of other classes are no peers: a batch of two classes renders as without repulsion.
    sampler = GuidedSampler(tiny_generator, GuidanceConfig(**base, repel_within_batch=True), bank=MemoryBank(8, 8))
    mixed = _render(sampler, ["cat", "dog"], [61, 62], ["actgen"] * 2, guides=guide).latents
    sampler = GuidedSampler(tiny_generator, GuidanceConfig(**base), bank=MemoryBank(8, 8))
    assert torch.equal(mixed, _render(sampler, ["cat", "dog"], [61, 62], ["actgen"] * 2, guides=guide).latents)


# -- samplers: DDIM and DPM-Solver++ beside the method's DDPM ----------------------------------------


def _reference_txt2img(gen, scheduler, prompt: str, seed: int, steps: int, cfg_scale: float) -> torch.Tensor:
    """Classifier-free-guided txt2img with a diffusers scheduler's own ``step``, from the sampler's x_T."""
    from actgen.builder.sampler import _randn, _streams

    x = _randn([_streams(seed)[0]], tuple(gen.latent_shape), "cpu")
    emb = torch.cat([gen.embed_unconditional(1), gen.embed_prompts([prompt])])
    # The sampler's grid (DDPM's "leading" spacing) for every solver; diffusers' DPM-Solver++
    # spaces "leading" over N + 1 intervals, so it is given the grid.
    grid = leading_timesteps(len(gen.alphas_cumprod), steps, gen.steps_offset)
    scheduler.set_timesteps(**({"timesteps": list(grid)} if "solver_order" in scheduler.config else
                               {"num_inference_steps": steps}))
    assert [int(t) for t in scheduler.timesteps] == list(grid)
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps_u, eps_c = gen.predict_noise(torch.cat([x, x]), int(t), emb).chunk(2)
            x = scheduler.step(eps_u + cfg_scale * (eps_c - eps_u), t, x).prev_sample
    return x


@pytest.mark.parametrize("kind", ["ddim", "dpmpp_2m"])
def test_unguided_ddim_and_dpm_solver_match_diffusers(tiny_generator, kind):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    base = {k: v for k, v in tiny_generator.scheduler_config.items() if not k.startswith("_")}
    if kind == "ddim":   # ᾱ' = 1 at the last step, as the sampler (and set_alpha_to_one) has it
        scheduler = DDIMScheduler.from_config(base, set_alpha_to_one=True, timestep_spacing="leading", clip_sample=False)
    else:
        scheduler = DPMSolverMultistepScheduler.from_config(
            base, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="leading", final_sigmas_type="zero",
            lower_order_final=True, use_karras_sigmas=False)
    sampler = GuidedSampler(tiny_generator, GuidanceConfig(num_steps=8, reference_steps=8, sampler=kind,
                                                           cfg_scale=3.0))
    ours = _render(sampler, ["cat"], [5], ["txt2img"]).latents
    reference = _reference_txt2img(tiny_generator, scheduler, "a photo of cat", 5, 8, 3.0)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0), ("dpmpp_2m", 0.0)])
def test_every_sampler_pulls_towards_the_guide_and_takes_its_step_count(tiny_generator, kind, eta, monkeypatch):
    names, seeds, guides = ["cat", "dog"], [11, 12], _guides(2)
    sampler = GuidedSampler(tiny_generator, GuidanceConfig(num_steps=7, reference_steps=40, sampler=kind, eta=eta,
                                                           use_mask=False))
    calls = []
    real = type(tiny_generator).predict_noise
    monkeypatch.setattr(type(tiny_generator), "predict_noise", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    guided = _render(sampler, names, seeds, ["img2img"] * 2, guides=guides)
    assert len(calls) == 7 and len(guided.gammas) == 7
    plain = _render(sampler, names, seeds, ["txt2img"] * 2)
    d_guided = (guided.latents - guided.guide_latents).flatten(1).norm(dim=1)
    d_plain = (plain.latents - guided.guide_latents).flatten(1).norm(dim=1)
    assert (d_guided < d_plain).all()
    # With the guide held (γ = 1) every solver's last step lands the sample on z_g, as DDPM's does.
    held = GuidedSampler(tiny_generator, GuidanceConfig(num_steps=7, reference_steps=7, sampler=kind, eta=eta,
                                                         guidance_strength=INF, use_mask=False))
    out = _render(held, names, seeds, ["img2img"] * 2, guides=guides)
    torch.testing.assert_close(out.latents, out.guide_latents, atol=1e-4, rtol=1e-4)


def test_ddim_eta_zero_ignores_the_step_noise_and_eta_one_uses_it(tiny_generator, monkeypatch):
    import actgen.builder.sampler as sampler_module

    real = sampler_module._randn

    def render(eta, quiet):
        calls = []

        def randn(rngs, shape, device):      # the x_T draws stay; the per-step draws are zeroed
            out = real(rngs, shape, device)
            calls.append(1)
            return out * 0 if quiet and len(calls) > 2 else out
        monkeypatch.setattr(sampler_module, "_randn", randn)
        sampler = GuidedSampler(tiny_generator, GuidanceConfig(**FAST, sampler="ddim", eta=eta))
        return _render(sampler, ["cat"], [3], ["txt2img"]).latents

    assert torch.equal(render(0.0, quiet=False), render(0.0, quiet=True))
    assert not torch.allclose(render(1.0, quiet=False), render(1.0, quiet=True))
    with pytest.raises(ValueError, match="guidance.eta"):
        GuidanceConfig(sampler="ddpm", eta=0.5)


def test_a_v_prediction_checkpoint_renders_every_mode_with_every_sampler(tiny_guidance_classifier):
    """SD 2.x 768-style checkpoints predict v: the generator turns v into ε (ε = √ᾱ v + √(1−ᾱ) x),
    so every mode and solver runs on them unchanged."""
    from actgen.builder.generator import DiffusersGenerator

    parts = build_tiny_generator(seed=1)      # its own modules: the session's generator stays as it is
    config = {**parts.scheduler_config, "prediction_type": "v_prediction"}
    gen = DiffusersGenerator(parts.unet, parts.vae, parts.text_encoder, parts.tokenizer, config,
                             attention_resolution=parts.latent_shape[1] // 2, dtype=torch.float32, name="tiny-v")
    x = torch.randn(2, *gen.latent_shape, generator=torch.Generator().manual_seed(0))
    emb = torch.cat([gen.embed_unconditional(1), gen.embed_prompts(["a photo of cat"])])
    with torch.no_grad():
        v = gen.unet(x, 500, encoder_hidden_states=emb).sample
        a = gen.alphas_cumprod[500]
        torch.testing.assert_close(gen.predict_noise(x, 500, emb), a.sqrt() * v + (1 - a).sqrt() * x)
    names, guides = ["cat", "dog", "cat"], _guides(3)
    for kind in ("ddpm", "ddim", "dpmpp_2m"):
        sampler = GuidedSampler(gen, GuidanceConfig(**FAST, sampler=kind), classifier=tiny_guidance_classifier,
                                bank=MemoryBank(capacity=8, sample_size=8))
        out = _render(sampler, names, [1, 2, 3], ["txt2img", "img2img", "actgen"], adversarial=[False, False, True],
                      guides=guides)
        assert out.images.shape == (3, 3, 32, 32) and torch.isfinite(out.images).all()
        held = GuidedSampler(gen, GuidanceConfig(**FAST, sampler=kind, guidance_strength=INF, use_mask=False))
        pinned = _render(held, ["cat"], [4], ["img2img"], guides=guides[:1])
        torch.testing.assert_close(pinned.latents, pinned.guide_latents, atol=1e-4, rtol=1e-4)
