"""``actgen.fitting.lora``: LoRA fine-tuning of the tiny random SD pipeline changes only the adapted
projections, and the fused result loads through the builder's loader and renders."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from actgen.builder.config import GuidanceConfig
from actgen.builder.generator import DiffusersGenerator, build_tiny_generator
from actgen.builder.sampler import GuidedSampler
from actgen.fitting.config import load_lora_config
from actgen.fitting.lora import ADAPTER_DIR, run_lora
from actgen.shards.fit_record import FIT_RECORD_FILE

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


@pytest.mark.slow
def test_lora_changes_only_adapted_projections_and_the_result_loads(tmp_path):
    base = build_tiny_generator(seed=0)
    before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    vae_before = {k: v.clone() for k, v in base.vae.state_dict().items()}
    text_before = {k: v.clone() for k, v in base.text_encoder.state_dict().items()}
    cfg = load_lora_config(None, [f"output='{tmp_path / 'g'}'", "steps=3", "batch_size=2", "lr=0.01",
                                  "warmup_steps=1", "log_every=1", "device=cpu"])
    result = run_lora(cfg, base=base)
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    assert result.adapter_parameters and all("lora_" in n for n in result.adapter_parameters)

    after = base.unet.state_dict()
    assert set(after) == set(before)            # peft layers unloaded: the plain diffusers layout
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "the fused adapters changed nothing"
    assert all(k.endswith(".weight") and any(f".{t}.weight" in k for t in TARGETS) for k in changed), changed
    for state, ref in ((base.vae.state_dict(), vae_before), (base.text_encoder.state_dict(), text_before)):
        assert all(torch.equal(state[k], ref[k]) for k in ref)

    adapter = load_file(tmp_path / "g" / ADAPTER_DIR / "pytorch_lora_weights.safetensors")
    assert len(adapter) == len(result.adapter_parameters)

    record = json.loads((tmp_path / "g" / FIT_RECORD_FILE).read_text())
    loaded = DiffusersGenerator.from_pretrained(str(tmp_path / "g"), device="cpu", attention_resolution=8)
    assert loaded.weights_hash() == record["weights_sha256"] == base.weights_hash()
    sampler = GuidedSampler(loaded, GuidanceConfig(num_steps=2, reference_steps=2))
    images = sampler.sample(["a photo of one"], ["one"], [1], [0], ["txt2img"]).images
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()


def test_lora_config_rejects_bad_values():
    with pytest.raises(ValueError, match="rank"):
        load_lora_config(None, ["output=x", "rank=0"])
    with pytest.raises(ValueError, match="nope"):
        load_lora_config(None, ["output=x", "nope=1"])


def test_cli_lora_on_the_tiny_pipeline(tmp_path):
    from click.testing import CliRunner

    from actgen.fitting.cli import main

    res = CliRunner().invoke(main, ["--lora", "--output", str(tmp_path / "g"), "--set", "steps=1",
                                    "--set", "batch_size=1", "--set", "device=cpu"])
    assert res.exit_code == 0, res.output
    assert "LoRA fine-tuned in 1 steps" in res.output and (tmp_path / "g" / "unet").is_dir()
