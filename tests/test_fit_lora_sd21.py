"""LoRA fitting on the real architecture: the full-size SD 2.1-base UNet, VAE and text encoder
(random weights, built in-process) at 64x64, streamed from an image folder, 1 image x 2
micro-batches a step. An interrupted fit resumed from its checkpoint matches an uninterrupted one
bit for bit, the finished fit's losses are finite, and the fused float32 generator loads through
the builder's loader with the adapter in it.

The architecture's configs are ``tests/configs/sd21-base-arch``, SD 2.1-base's own component
configs (what ``test_build_sd21_arch.py`` reads). Slow: about 1.5 minutes on one thread, most of it building 1.3B random
parameters, five steps and hashing the saved weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

pytestmark = [pytest.mark.slow, pytest.mark.arch, pytest.mark.usefixtures("torch_one_thread")]

SD21_ARCH = Path(__file__).resolve().parent / "configs" / "sd21-base-arch"
NAMES = ("circle", "square")


def _sd21_generator():
    """The SD 2.1-base architecture with random weights and 8x8 latents (64x64 images), on the CPU."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from actgen.builder.generator import DiffusersGenerator
    from actgen.builder.tiny import tiny_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config({**UNet2DConditionModel.load_config(str(SD21_ARCH / "unet")),
                                             "sample_size": 8})
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(SD21_ARCH / "vae")))
    text_config = CLIPTextConfig.from_pretrained(str(SD21_ARCH / "text_encoder"))
    tokenizer = tiny_tokenizer(words=("a", "photo", "of", *NAMES), vocab_size=text_config.vocab_size)
    scheduler = json.loads((SD21_ARCH / "scheduler" / "scheduler_config.json").read_text())
    return DiffusersGenerator(unet, vae, CLIPTextModel(text_config), tokenizer, scheduler, device="cpu",
                              name="sd21-base-arch(random)")


def _image_folder(root: Path) -> Path:
    """root/<class>/<i>.png, 3 images a class (2 classes: each prompt costs a second to embed)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in NAMES:
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def _adapter_and_losses(output: Path) -> tuple[dict[str, torch.Tensor], list]:
    from actgen.fitting.config import lora_checkpoint_path

    with safe_open(str(lora_checkpoint_path(output)), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith("adapter/")}
        state = dict(json.loads(f.metadata()["actgen.state"])["dict"])
    return tensors, state["losses"]


def test_lora_on_the_sd21_architecture_streams_resumes_and_loads(tmp_path):
    from actgen.builder.generator import DiffusersGenerator
    from actgen.fitting.config import load_lora_config
    from actgen.fitting.lora import ADAPTER_DIR, run_lora
    from actgen.shards.fit_record import FIT_RECORD_FILE

    folder = _image_folder(tmp_path / "data")
    gen = _sd21_generator()
    assert gen.image_size == 64 and gen.prediction_type == "epsilon"
    target = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    other = "down_blocks.1.attentions.0.proj_in.weight"
    before = {k: gen.unet.state_dict()[k].clone() for k in (target, other)}

    def cfg(name):
        return load_lora_config(None, [f"output='{tmp_path / name}'", f"data.path='{folder}'", "steps=3",
                                       "batch_size=1", "grad_accumulation=2", "lr=1e-3", "warmup_steps=1",
                                       "log_every=1", "device=cpu", "progress=false", "checkpoint_every=1"])

    # Two steps straight, then one step, a stop, and a resume to two: the same adapter, the same
    # losses. A stopped fit leaves the base as it was, so the three calls share one built generator.
    straight = run_lora(cfg("a"), base=gen, stop_after=2)
    run_lora(cfg("b"), base=gen, stop_after=1)
    resumed = run_lora(cfg("b"), base=gen, resume=True, stop_after=2)
    assert resumed.step == 2 and not resumed.finished and resumed.losses == straight.losses
    (a, losses_a), (b, losses_b) = _adapter_and_losses(tmp_path / "a"), _adapter_and_losses(tmp_path / "b")
    assert len(a) == len(straight.adapter_parameters) > 0 and losses_a == losses_b == straight.losses
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.endswith("lora_B.default.weight") and a[k].abs().sum() > 0 for k in a)   # B starts at 0

    # The last step, then the fused float32 generator in the builder's layout.
    done = run_lora(cfg("b"), base=gen, resume=True)
    assert done.finished and len(done.losses) == 3 and all(np.isfinite(done.losses))
    fused = {k: gen.unet.state_dict()[k].clone() for k in (target, other)}
    assert not torch.equal(fused[target], before[target]) and torch.equal(fused[other], before[other])
    del gen
    record = json.loads((tmp_path / "b" / FIT_RECORD_FILE).read_text())
    assert record["method"] == "lora" and record["steps"] == 3 and record["data"]["class_names"] == list(NAMES)
    assert (tmp_path / "b" / ADAPTER_DIR / "pytorch_lora_weights.safetensors").is_file()

    loaded = DiffusersGenerator.from_pretrained(str(tmp_path / "b"), device="cpu")
    weights = loaded.unet.state_dict()
    assert {t.dtype for t in weights.values()} == {torch.float32}
    assert all(torch.equal(weights[k], fused[k]) for k in fused)
