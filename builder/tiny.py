"""A tiny Stable Diffusion generator with random weights and a locally written tokenizer: the
same classes as a real one (:class:`~.generator.DiffusersGenerator`), milliseconds a step on a CPU,
for tests, smoke runs and the fitting of the embedded digits' generator. Nothing is downloaded."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch

from .generator import DiffusersGenerator

# Words the tiny tokenizer knows as whole tokens; any other lower-case ASCII word still
# tokenizes, into single-character tokens (which is how the tests get multi-token names).
TINY_WORDS = ("a", "photo", "of", "cat", "dog", "ship", "truck", "bird", "aquarium", "fish")



def tiny_tokenizer(words: Sequence[str] = TINY_WORDS, max_length: int = 77, vocab_size: Optional[int] = None):
    """A CLIP BPE tokenizer over the 256 byte symbols plus whole-word merges for ``words``;
    ``vocab_size`` pads the vocabulary with filler tokens to that many ids (e.g. CLIP's 49,408,
    for a text encoder of the real architecture)."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    for ch in alphabet:
        vocab.setdefault(ch + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words:
        # Left-to-right merges: "c a" -> "ca", "ca t</w>" -> "cat</w>".
        syms = list(word[:-1]) + [word[-1] + "</w>"]
        while len(syms) > 1:
            pair = (syms[0], syms[1])
            if pair not in merges:
                merges.append(pair)
            syms = [syms[0] + syms[1]] + syms[2:]
            vocab.setdefault(syms[0], len(vocab))
    while vocab_size is not None and len(vocab) < vocab_size:
        vocab[f"<|filler{len(vocab)}|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def build_tiny_generator(seed: int = 0, *, image_size: int = 32, device: str = "cpu") -> DiffusersGenerator:
    """A random-weight SD-architecture generator that runs in milliseconds on a CPU.

    VAE with 2 blocks (scale factor 2), UNet with 2 cross-attention down blocks (feature sides
    latent and latent/2) and cross-attention up blocks, 2-layer CLIP text encoder, tiny tokenizer.
    Attention is captured at latent/2 (``down_blocks.1`` and ``up_blocks.0``), the coarser level,
    as the paper's 16x16 is the coarse level of SD's 64x64 latent.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if image_size % 4:
        raise ValueError(f"image_size={image_size}: must be a multiple of 4")
    latent = image_size // 2
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)   # diffusers/transformers initialise from the global RNG
    unet = UNet2DConditionModel(
        sample_size=latent, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=32, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, sample_size=image_size,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()), hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    scheduler_config = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
                        "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1,
                        "clip_sample": False, "prediction_type": "epsilon", "set_alpha_to_one": False}
    return DiffusersGenerator(unet, vae, text_encoder, tokenizer, scheduler_config,
                              attention_resolution=latent // 2, device=device, dtype=torch.float32,
                              name=f"tiny-random-sd(seed={seed})")
