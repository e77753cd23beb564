"""ActGen's guided sampler (DDPM, as the method; DDIM and DPM-Solver++ as options); the batch transform around it is in :mod:`.batch_transform`.

One code path renders three modes, chosen per sample:

- ``txt2img``: plain classifier-free-guided DDPM sampling (the paper's random baseline);
- ``img2img``: the latent is pulled onto a guide trajectory x^g that shares the noise and is
  driven with x0 = z_g (the VAE latent of the hard sample), with weight γ_i = sigmoid(s − i);
- ``actgen``: image guidance with the class-token attention mask M_i, plus, in the first K steps,
  gradient steps on the prompt embeddings: L = L_contra − λ·CE(f(D(x̂0)), y), c ← c − ν·ĝ.

Everything that makes a sample is per sample: its seed drives its own ``torch.Generator`` (on the
CPU, so a seed means the same noise on any device), its mask, its memory-bank draw and the
normalisation of its embedding gradient. The loss of a batch is a sum of per-sample losses and
each sample has its own ``[L, D]`` embeddings (77 token rows for SD; SDXL adds its pooled
embedding as one more row), so batching changes nothing but speed.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional


import numpy as np
import torch
import torch.nn.functional as F

from .bank import MemoryBank, contrastive_loss
from .config import GuidanceConfig
from .generator import Generator
from .schedules import MODES, Mode
from .solver import Solver, gamma_schedule, leading_timesteps

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuidanceClassifier:
    """The classifier f of the adversarial term and how it wants its input.

    Attributes:
        model: maps normalised ``[B, 3, H, W]`` float32 images to logits.
        input_size: ``(H, W)`` the decoded images are resized to (bilinear).
        mean, std: per-channel normalisation applied to images in [0, 1].
    """

    model: torch.nn.Module
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for images in [-1, 1] (paper: (x/2 + 0.5).clamp(0, 1), resize, normalise)."""
        p = next(self.model.parameters())
        x = (images.float() / 2 + 0.5).clamp(0, 1)
        x = F.interpolate(x, size=tuple(self.input_size), mode="bilinear", align_corners=False)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return self.model(((x - mean) / std).to(p.device, torch.float32))


@dataclass(frozen=True)
class SampleOutput:
    """What one batch renders.

    Attributes:
        images: ``[B, 3, H, W]`` float32 in [-1, 1].
        latents: final latents ``[B, C, h, w]`` float32.
        guide_latents: z_g ``[B, C, h, w]`` (zeros for txt2img rows).
        masks: with ``record_masks``, per step the mask applied to each sample ``[B, 1, h, w]``
            (ones where no mask is used).
        gammas: γ_i per step.
    """

    images: torch.Tensor
    latents: torch.Tensor
    guide_latents: torch.Tensor
    masks: list[torch.Tensor] = field(default_factory=list)
    gammas: list[float] = field(default_factory=list)


# -- pure schedule pieces ---------------------------------------------------------------------


def attention_mask(attn: torch.Tensor, running_sum: torch.Tensor, kind: str, size: tuple[int, int],
                   threshold: float | None = None) -> torch.Tensor:
    """The latent-interpolation mask from class-token attention.

    Args:
        attn: this step's class-token attention A_i ``[B, r, r]``.
        running_sum: Σ_{j≤i} A_j ``[B, r, r]`` (including this step).
        kind: ``"cumulative"`` (1 + running sum, the paper code) or ``"foreground"`` (A_i
            upsampled, then min-max normalised per sample to [0, 1]).
        size: latent ``(h, w)`` to upsample to (bilinear).
        threshold: for ``"foreground"``, binarise the normalised mask (``M >= threshold``).

    Returns:
        ``[B, 1, h, w]``, broadcast over latent channels.
    """
    if kind == "cumulative":
        m = F.interpolate((1.0 + running_sum)[:, None], size=size, mode="bilinear", align_corners=False)
    elif kind == "foreground":
        # Upsample first, so that the normalised latent-size mask spans exactly [0, 1].
        m = F.interpolate(attn[:, None], size=size, mode="bilinear", align_corners=False)
        flat = m.flatten(1)
        lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
        hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
        m = (m - lo) / (hi - lo).clamp_min(1e-12)
        if threshold is not None:
            m = (m >= threshold).to(m.dtype)
    else:
        raise ValueError(f"mask={kind!r}: expected 'cumulative' or 'foreground'")
    return m


def normalize_gradient(g_uncond: torch.Tensor, g_cond: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample normalisation of the embedding gradients ``[B, L, D]`` (NaN -> 0)."""
    if kind == "token":
        # Paper code: F.normalize(g) on [2, 77, D], i.e. dim=1, the token axis, per channel.
        return (torch.nan_to_num(F.normalize(g_uncond, dim=1), nan=0.0),
                torch.nan_to_num(F.normalize(g_cond, dim=1), nan=0.0))
    if kind == "global":
        norm = (g_uncond.pow(2).sum(dim=(1, 2)) + g_cond.pow(2).sum(dim=(1, 2))).sqrt().view(-1, 1, 1)
        scale = torch.where(norm > 0, 1.0 / norm.clamp_min(1e-30), torch.zeros_like(norm))
        return torch.nan_to_num(g_uncond * scale, nan=0.0), torch.nan_to_num(g_cond * scale, nan=0.0)
    raise ValueError(f"grad_norm={kind!r}: expected 'token' or 'global'")


# -- the sampler ------------------------------------------------------------------------------


class GuidedSampler:
    """Renders batches with :meth:`sample`; holds the generator, classifier and memory bank.

    Args:
        generator: the diffusion model.
        config: guidance settings.
        classifier: needed only when some sample gets the adversarial term; put in eval mode
            and frozen here.
        bank: memory bank for the contrastive term; guided samples' final latents are added to it.
    """

    def __init__(self, generator: Generator, config: GuidanceConfig,
                 classifier: GuidanceClassifier | None = None, bank: MemoryBank | None = None):
        self.generator = generator
        self.config = config
        self.classifier = classifier
        self.bank = bank
        if classifier is not None:
            classifier.model.eval().requires_grad_(False)

    def sample(self, prompts: Sequence[str], class_names: Sequence[str], labels: Sequence[int],
               seeds: Sequence[int], modes: Sequence[Mode], adversarial: Sequence[bool] | None = None,
               guides: torch.Tensor | None = None, record_masks: bool = False) -> SampleOutput:
        """Render one batch.

        Args:
            prompts: per-sample prompt, e.g. "a photo of cat".
            class_names: per-sample class name, located in the prompt for the attention mask.
            labels: per-sample class index (classifier target, memory-bank key).
            seeds: per-sample seeds; a seed fixes the sample whatever else is in the batch.
            modes: per-sample ``"txt2img" | "img2img" | "actgen"``.
            adversarial: per-sample switch for the CE term (actgen only); default all False.
            guides: ``[B, 3, H, W]`` in [-1, 1] at the generator's image size; rows of txt2img
                samples are ignored; may be None when every sample is txt2img.
            record_masks: keep every step's mask in the output.
        """
        cfg, gen = self.config, self.generator
        b = len(seeds)
        adversarial = [False] * b if adversarial is None else [bool(a) for a in adversarial]
        self._check_inputs(prompts, class_names, labels, seeds, modes, adversarial, guides)
        dev = gen.device
        c, h, w = gen.latent_shape
        streams = [_streams(int(s)) for s in seeds]
        rngs = [st[0] for st in streams]
        guided = [m != "txt2img" for m in modes]
        actgen = [m == "actgen" for m in modes]

        # 1. Per-sample noise. Three streams per seed, so that switching a sample's mode or
        #    guidance terms never shifts the noise of the others: x_T and the per-step noise
        #    (shared by x and x^g) come from the sample stream seeded with the seed itself;
        #    x^g_T and the VAE posterior sample from the guide stream; the bank draw from its own.
        x = _randn(rngs, (c, h, w), dev)
        x_guide = _randn([st[1] for st in streams], (c, h, w), dev)
        # Every step's noise now, in the order the loop uses it (the same draws as step by step),
        # moved to the device in one copy: a copy per step would make the host wait for the GPU
        # at every step.
        step_noise = torch.stack([_randn(rngs, (c, h, w), "cpu") for _ in range(cfg.num_steps)]).to(dev)  # [S, B, C, h, w]

        # 2. Guide latents z_g.
        z_guide = torch.zeros(b, c, h, w, device=dev)
        rows = [i for i in range(b) if guided[i]]
        if rows:
            with torch.no_grad():
                z_guide[rows] = gen.encode_image(guides[rows].to(dev), [streams[i][1] for i in rows])

        # 3. Which sample gets which guidance.
        masked = [a and cfg.use_mask for a in actgen]
        adv = [a and cfg.use_adversarial and adversarial[i] for i, a in enumerate(actgen)]
        if any(adv) and self.classifier is None:
            raise ValueError(f"{sum(adv)} samples ask for the adversarial term but the sampler has no classifier")
        bank_draw: list[torch.Tensor | None] = [None] * b
        if cfg.use_contrastive and self.bank is not None:
            for i in range(b):
                if actgen[i]:
                    z = self.bank.sample(int(labels[i]), streams[i][2])
                    bank_draw[i] = None if z is None else z.to(dev)
        # Renders of one class in this batch that repel each other (repel_within_batch).
        peers = _batch_peers(labels, actgen) if cfg.use_contrastive and cfg.repel_within_batch else [[]] * b
        contra = [bank_draw[i] is not None or bool(peers[i]) for i in range(b)]
        lossy = [adv[i] or contra[i] for i in range(b)]
        margin = cfg.effective_margin(c * h * w)

        # 4. Embeddings: per-sample copies, both CFG halves, updated by the gradient steps.
        cond = gen.embed_prompts(list(prompts)).clone()                  # [B, L, D]
        uncond = gen.embed_unconditional(b).clone()                      # [B, L, D]
        tokens = [gen.token_indices(p, n) for p, n in zip(prompts, class_names)] if any(masked) else []

        # 5. Schedules.
        timesteps = leading_timesteps(len(gen.alphas_cumprod), cfg.num_steps, gen.steps_offset)
        ratio = len(gen.alphas_cumprod) // cfg.num_steps
        abar = gen.alphas_cumprod.double()
        gammas = gamma_schedule(cfg.num_steps, cfg.scaled_strength)
        grad_steps = cfg.scaled_guidance_steps
        guided_t = torch.tensor(guided, device=dev, dtype=torch.float32).view(b, 1, 1, 1)
        masked_t = torch.tensor(masked, device=dev).view(b, 1, 1, 1)
        running = None
        masks_out: list[torch.Tensor] = []
        solver = Solver(cfg.sampler, cfg.eta)

        # 6. Denoising loop.
        for i, t in enumerate(timesteps):
            abar_t = float(abar[t])
            abar_prev = float(abar[t - ratio]) if t - ratio >= 0 else 1.0
            # 6a-b. ε with classifier-free guidance, x̂0, and in the first K steps the gradient of
            #       the guidance loss (a sum of per-sample losses) w.r.t. both embeddings.
            grad_rows = [j for j in range(b) if lossy[j]] if i < grad_steps else []
            eps, x0_hat, attn, grads = self._eps_and_grad(x, t, abar_t, uncond, cond, grad_rows,
                                                          tokens if any(masked) else None, labels, adv,
                                                          (bank_draw, peers, margin))

            # 6c. The solver's step of the sample and of the guide trajectory (x0 = z_g), same noise.
            noise = step_noise[i]                                                 # [B, C, h, w]
            x_prev = solver.step(x, x0_hat, noise, abar_t, abar_prev)
            x_guide = solver.step(x_guide, z_guide, noise, abar_t, abar_prev, fixed=True)

            # 6d. Attentive latent interpolation x ← x − γ·M ⊙ (x − x^g).
            mask = torch.ones(b, 1, h, w, device=dev)
            if any(masked):
                running = attn if running is None else running + attn
                m = attention_mask(attn, running, cfg.mask, (h, w), cfg.mask_threshold)
                mask = torch.where(masked_t, m, mask)
            gamma = gammas[i] * guided_t                                          # [B, 1, 1, 1]
            x = x_prev - gamma * mask * (x_prev - x_guide)
            if record_masks:
                masks_out.append(mask.cpu())

            # 6e. Embedding update, after the step: it shapes the following steps.
            if grads is not None:
                g_u, g_c = normalize_gradient(*grads, cfg.grad_norm)
                uncond = uncond - cfg.step_size * g_u
                cond = cond - cfg.step_size * g_c

        # 7. Decode; remember the guided samples' final latents for the contrastive term.
        with torch.no_grad():
            images = gen.decode_latents(x).clamp(-1, 1)
        if self.bank is not None and rows:
            self.bank.add([int(labels[i]) for i in rows], x[rows])
        return SampleOutput(images=images, latents=x, guide_latents=z_guide, masks=masks_out, gammas=gammas)

    def _eps_and_grad(self, x: torch.Tensor, t: int, abar_t: float, uncond: torch.Tensor, cond: torch.Tensor,
                      grad_rows: list[int], tokens: Optional[list], labels: Sequence[int], adv: list[bool],
                      contrast: tuple):
        """``(ε, x̂0, attention [B, r, r] or None, (g_uncond, g_cond) or None)`` for one step.

        Only the rows with a guidance loss (``grad_rows``) run the UNet with autograd; the others
        run without it, so a text-to-image row never pays for a backward pass (or its stored
        activations). Both calls together cost the UNet work of one batch.
        """
        cfg, gen = self.config, self.generator
        b = x.shape[0]
        rest = [j for j in range(b) if j not in set(grad_rows)]
        eps, x0_hat = torch.empty_like(x), torch.empty_like(x)
        attn = None
        grads = None
        for rows, with_grad in ((grad_rows, True), (rest, False)):
            if not rows:
                continue
            whole = len(rows) == b                # one call over the batch: no gather/scatter
            sel = slice(None) if whole else rows
            with torch.set_grad_enabled(with_grad):
                cu = uncond[sel].detach().requires_grad_(with_grad)
                cc = cond[sel].detach().requires_grad_(with_grad)
                xs = x[sel]
                eps2 = gen.predict_noise(torch.cat([xs, xs]), t, torch.cat([cu, cc]), capture_attention=tokens is not None)
                eps_u, eps_c = eps2.chunk(2)
                e = eps_u + cfg.cfg_scale * (eps_c - eps_u)
                x0 = (xs - math.sqrt(1 - abar_t) * e) / math.sqrt(abar_t)
            if tokens is not None:
                part = gen.attention.mask([tokens[j] for j in range(b)] if whole else [tokens[j] for j in rows],
                                          cfg_halves=2).to(x.device)
                if attn is None:
                    attn = part if whole else torch.zeros(b, *part.shape[1:], device=x.device)
                if not whole:
                    attn[rows] = part
            if with_grad:
                g_u, g_c = self._loss_gradient(x0, [cu, cc], rows, labels, adv, contrast)
                if whole:
                    grads = (g_u, g_c)
                else:
                    grads = (torch.zeros_like(uncond), torch.zeros_like(cond))
                    grads[0][rows], grads[1][rows] = g_u, g_c
            eps[sel], x0_hat[sel] = e.detach(), x0.detach()
        return eps, x0_hat, attn, grads

    def _loss_gradient(self, x0_hat: torch.Tensor, embeddings: list[torch.Tensor], rows: list[int],
                       labels: Sequence[int], adv: list[bool], contrast: tuple):
        """∇ of Σ_b [L_contra(x̂0_b) − λ·CE(f(D(x̂0_b)), y_b)] w.r.t. ``embeddings``, for batch rows ``rows``
        (row k of ``x0_hat`` is batch row ``rows[k]``).

        The loss is first differentiated w.r.t. a detached copy of x̂0, the adversarial decode
        ``adversarial_chunk`` images at a time with each chunk's backward right after it, so at
        most one chunk's VAE graph is alive; then x̂0's gradient is pushed through the UNet once.
        """
        cfg = self.config
        bank_draw, peers, margin = contrast      # the bank's draw and batch peers per row; ρ
        leaf = x0_hat.detach().requires_grad_(True)
        position = {i: k for k, i in enumerate(rows)}
        contra = []
        for k, i in enumerate(rows):
            # The peers' current x̂0, detached: each render is pushed away from the others and
            # not pulled by them (as a bank entry is fixed).
            others = [leaf[position[j]].detach()[None] for j in peers[i] if j in position]
            targets = ([bank_draw[i]] if bank_draw[i] is not None else []) + others
            if targets:
                contra.append(contrastive_loss(leaf[k], torch.cat(targets), margin))
        if contra:
            torch.stack(contra).sum().backward()
        adversarial = [k for k, i in enumerate(rows) if adv[i]]
        side = self._adversarial_latent_side() if adversarial else None
        for first in range(0, len(adversarial), cfg.adversarial_chunk):
            chunk = adversarial[first:first + cfg.adversarial_chunk]
            z = leaf[chunk]                                                               # [A, C, h, w]
            if side is not None:
                # The cheap decode: smaller latents, a smaller VAE decode and backward (not the method).
                z = F.interpolate(z, size=(side, side), mode="bilinear", align_corners=False)
            logits = self.classifier.logits(self.generator.decode_latents(z))             # [A, classes]
            target = torch.tensor([int(labels[rows[k]]) for k in chunk], device=logits.device)
            ce = F.cross_entropy(logits, target, reduction="sum")                       # Σ of per-sample CE
            (-cfg.adversarial_weight * ce.to(leaf.device)).backward()
        return torch.autograd.grad(x0_hat, embeddings, grad_outputs=leaf.grad)

    def _adversarial_latent_side(self) -> Optional[int]:
        """Latent side of the adversarial decode: None (full size) unless ``adversarial_decode_size``."""
        size = self.config.adversarial_decode_size
        if size is None:
            return None
        gen = self.generator
        factor = gen.image_size // gen.latent_shape[2]
        if size % factor or size > gen.image_size:
            raise ValueError(f"guidance.adversarial_decode_size={size}: must be a multiple of the VAE's downsampling "
                             f"factor {factor} and at most the generator's size {gen.image_size}")
        return None if size == gen.image_size else size // factor

    def _check_inputs(self, prompts, class_names, labels, seeds, modes, adversarial, guides) -> None:
        b = len(seeds)
        if b == 0:
            raise ValueError("empty batch: seeds is empty")
        for name, seq in (("prompts", prompts), ("class_names", class_names), ("labels", labels),
                          ("modes", modes), ("adversarial", adversarial)):
            if len(seq) != b:
                raise ValueError(f"{name} has {len(seq)} entries for {b} seeds")
        for i, m in enumerate(modes):
            if m not in MODES:
                raise ValueError(f"modes[{i}]={m!r}: expected one of {MODES}")
        for i, s in enumerate(seeds):
            if int(s) < 0:
                raise ValueError(f"seeds[{i}]={s}: must be >= 0")
        if any(m != "txt2img" for m in modes):
            size = self.generator.image_size
            if guides is None:
                raise ValueError("guides is None but some samples use image guidance")
            if tuple(guides.shape) != (b, 3, size, size):
                raise ValueError(f"guides must be [{b}, 3, {size}, {size}] in [-1, 1], got {tuple(guides.shape)}")


def _batch_peers(labels: Sequence[int], actgen: Sequence[bool]) -> list[list[int]]:
    """For each actgen row, the other actgen rows of its class in the batch (else none)."""
    return [[j for j in range(len(labels)) if j != i and actgen[j] and int(labels[j]) == int(labels[i])]
            if actgen[i] else [] for i in range(len(labels))]


def _streams(seed: int) -> tuple[torch.Generator, torch.Generator, torch.Generator]:
    """(sample, guide, bank) CPU generators for one seed; the sample stream is seeded with it."""
    guide_seed, bank_seed = np.random.SeedSequence([seed, 0x61637467]).generate_state(2, dtype=np.uint64)
    return (torch.Generator("cpu").manual_seed(seed),
            torch.Generator("cpu").manual_seed(int(guide_seed)),
            torch.Generator("cpu").manual_seed(int(bank_seed)))


def _randn(rngs: Sequence[torch.Generator], shape: tuple[int, ...], device) -> torch.Tensor:
    """One standard-normal draw per sample from its own CPU generator, ``[B, *shape]``."""
    return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in rngs]).to(device)


# -- the Ray batch transform ------------------------------------------------------------------
