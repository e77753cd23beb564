"""The networks of a fit from scratch: random-weight UNet, autoencoder, text encoder and
tokenizer; the autoencoder's fit to the identity; the EMA of the trained weights.

**Pixel space.** The builder's loader needs an ``AutoencoderKL``. A one-level autoencoder (scale
factor 1, 3 latent channels) is fitted first to be the identity: its encoder mean is trained
towards the image itself and its decoder to reconstruct from the image or the encoded latent
plus a little noise; its log-variance is then pinned to the minimum (-30), so encoding is
deterministic. Latents are the pixels (up to the autoencoder's small error), so the UNet, its
cross-attention maps and the sampler's gradients through ``decode_latents`` are those of a
pixel-space model, and the builder's attention-mask and embedding-gradient mechanisms run unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from actgen.builder.tiny import tiny_tokenizer

from .config import FitConfig, FitModelConfig

LOGVAR_MIN = -30.0        # DiagonalGaussianDistribution clamps logvar to [-30, 20]


def build_models(cfg: FitModelConfig, vocabulary: list[str], seed: int):
    """Random-weight UNet, autoencoder, text encoder and tokenizer for ``cfg``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer(vocabulary, max_length=cfg.text_max_length)
    levels = len(cfg.block_out_channels)
    down = tuple("CrossAttnDownBlock2D" if cfg.attends(i) else "DownBlock2D" for i in range(levels))
    up = tuple("CrossAttnUpBlock2D" if cfg.attends(i) else "UpBlock2D" for i in reversed(range(levels)))
    mid = "UNetMidBlock2DCrossAttn" if cfg.attends(levels - 1) else "UNetMidBlock2D"
    torch.manual_seed(seed)   # diffusers/transformers initialise from the global RNG
    unet = UNet2DConditionModel(
        sample_size=cfg.image_size, in_channels=3, out_channels=3, layers_per_block=cfg.layers_per_block,
        block_out_channels=tuple(cfg.block_out_channels), norm_num_groups=8,
        cross_attention_dim=cfg.cross_attention_dim, attention_head_dim=cfg.attention_head_dim,
        down_block_types=down, up_block_types=up, mid_block_type=mid)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=3, block_out_channels=(cfg.autoencoder_channels,),
        layers_per_block=1, norm_num_groups=8, sample_size=cfg.image_size, scaling_factor=1.0,
        mid_block_add_attention=False,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",))
    d = cfg.cross_attention_dim
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()), hidden_size=d, intermediate_size=2 * d,
        num_attention_heads=max(1, d // 16), num_hidden_layers=cfg.text_layers,
        max_position_embeddings=cfg.text_max_length, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    return unet, vae, text_encoder, tokenizer


def scheduler_config(cfg: FitConfig) -> dict:
    """The DDPM scheduler config the fit trains against and the saved generator samples with."""
    return {"_class_name": "DDPMScheduler", "num_train_timesteps": cfg.num_train_timesteps,
            "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": cfg.noise_schedule, "steps_offset": 1,
            "clip_sample": False, "prediction_type": "epsilon", "set_alpha_to_one": False,
            "timestep_spacing": "leading"}


def fit_autoencoder(vae, images: torch.Tensor, steps: int, lr: float, batch_size: int,
                    rng: torch.Generator, device: torch.device) -> list[float]:
    """Train ``vae`` towards the identity (see the module docstring), then pin its variance."""
    vae.train().requires_grad_(True)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        x = images[torch.randint(len(images), (batch_size,), generator=rng)].to(device)
        noise = torch.randn(x.shape, generator=rng).to(device)
        # The encoder mean is the image; the decoder maps the image or the encoded latent, each
        # with a little noise (latents from diffusion are never exact), back to the image.
        mean = vae.encode(x).latent_dist.mean
        z = torch.cat([mean, x]) + 0.05 * torch.cat([noise, noise])
        loss = F.mse_loss(mean, x) + F.mse_loss(vae.decode(z).sample, torch.cat([x, x]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        # quant_conv maps [mean | logvar] -> [mean | logvar]; zero the logvar rows and set their bias
        # to the minimum: std = exp(-15), so encode_image is deterministic.
        c = vae.config.latent_channels
        vae.quant_conv.weight[c:] = 0
        vae.quant_conv.bias[c:] = LOGVAR_MIN
    vae.eval().requires_grad_(False)
    return losses


@torch.no_grad()
def encode_all(vae, images: torch.Tensor, device: torch.device, chunk: int = 256) -> torch.Tensor:
    """Every image's latent (the encoder is deterministic once its variance is pinned), on the CPU."""
    return torch.cat([vae.encode(images[i:i + chunk].to(device)).latent_dist.mean.cpu()
                      for i in range(0, len(images), chunk)])                       # [N, 3, S, S]


def ema_decay(step: int, decay: float) -> float:
    """The usual warmup of the EMA decay, so early averages are not dominated by the random init."""
    return min(decay, (1 + step) / (10 + step))


class EMA:
    """Exponential moving average of a set of modules' float parameters (float32 copies)."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.shadow = {f"{name}.{k}": p.detach().float().clone()
                       for name, m in modules.items() for k, p in m.named_parameters()}

    @torch.no_grad()
    def update(self, modules: dict[str, torch.nn.Module], decay: float) -> None:
        for name, m in modules.items():
            for k, p in m.named_parameters():
                self.shadow[f"{name}.{k}"].lerp_(p.detach().float(), 1 - decay)

    @torch.no_grad()
    def copy_to(self, modules: dict[str, torch.nn.Module]) -> None:
        for name, m in modules.items():
            for k, p in m.named_parameters():
                p.copy_(self.shadow[f"{name}.{k}"].to(p.dtype))
