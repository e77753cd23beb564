"""The real architecture through the real command: ``actgen-build`` on the full-size SD 2.1-base
architecture (random weights, saved as safetensors, a locally built tokenizer of CLIP's vocabulary
size) at 64x64, all three modes, contrastive and adversarial on, then ``verify``.

The architecture's configs ship beside this file (``configs/sd21-base-arch``, SD 2.1-base's public
component configs). Slow: building and saving 1.3B random parameters, then rendering 3 images on
the CPU.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

SD21_ARCH = Path(__file__).resolve().parent / "configs" / "sd21-base-arch"

pytestmark = [pytest.mark.slow, pytest.mark.arch]


@pytest.fixture(scope="module")
def sd21_arch_dir(tmp_path_factory):
    """A Stable Diffusion directory of the SD 2.1-base architecture, random weights, 64x64 images."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from actgen.builder.tiny import tiny_tokenizer
    from actgen.shards.sources import DIGIT_NAMES

    directory = tmp_path_factory.mktemp("sd21-arch")
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config({**UNet2DConditionModel.load_config(str(SD21_ARCH / "unet")),
                                             "sample_size": 8})
    unet.save_pretrained(directory / "unet", safe_serialization=True)
    del unet
    AutoencoderKL.from_config(AutoencoderKL.load_config(str(SD21_ARCH / "vae"))).save_pretrained(
        directory / "vae", safe_serialization=True)
    text_config = CLIPTextConfig.from_pretrained(str(SD21_ARCH / "text_encoder"))
    CLIPTextModel(text_config).save_pretrained(directory / "text_encoder", safe_serialization=True)
    tokenizer = tiny_tokenizer(words=("a", "photo", "of", *DIGIT_NAMES), vocab_size=text_config.vocab_size)
    assert len(tokenizer) == text_config.vocab_size == 49408
    tokenizer.save_pretrained(directory / "tokenizer")
    shutil.copytree(SD21_ARCH / "scheduler", directory / "scheduler")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


SETS = ("budget=3", "output.samples_per_shard=3", "mode=actgen")


def test_actgen_build_on_the_sd21_base_architecture(sd21_arch_dir, write_round, arch_build, tmp_path,
                                                    torch_one_thread):
    from actgen.shards.reader import ShardRandomAccess
    from actgen.shards.sources import DIGIT_NAMES
    from actgen.shards.verify import verify

    # One hard sample rendered 3 times, one image per batch: from the second image on, the
    # contrastive term has a bank entry of the class (bank_scope=worker).
    round_dir, _ = write_round(tmp_path / "rounds" / "1", num_hard=1)
    out = tmp_path / "shards"
    modes = {}
    for mode in ("txt2img", "img2img", "actgen"):
        result = arch_build(round_dir, sd21_arch_dir, out / mode, *SETS, f"mode={mode}", "output.overwrite=true")
        assert result.exit_code == 0, result.output
        verify(out / mode, class_names=list(DIGIT_NAMES))
        shards = ShardRandomAccess(out / mode)
        samples = [shards.sample(i) for i in range(len(shards))]
        assert len(samples) == 3 and all(s.image.size == (64, 64) for s in samples)
        modes[mode] = samples
    guidance = modes["actgen"][0].provenance["guidance"]
    assert guidance["mode"] == "actgen" and guidance["adversarial"] and guidance["contrastive"]
    assert modes["actgen"][0].provenance["generator"]["image_size"] == 64


def test_actgen_build_on_the_sd21_base_architecture_in_bfloat16(sd21_arch_dir, write_round, arch_build, tmp_path,
                                                                 torch_one_thread):
    # bfloat16 weights and activations through every mode's path (guidance gradients included),
    # on the GPU when there is one, else on the CPU (which runs bfloat16 too, slowly without AMX).
    from actgen.shards.reader import ShardRandomAccess
    from actgen.shards.sources import DIGIT_NAMES
    from actgen.shards.verify import verify

    round_dir, _ = write_round(tmp_path / "rounds" / "1", num_hard=1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = arch_build(round_dir, sd21_arch_dir, tmp_path / "shards", *SETS, f"generator.device={device}",
                        "generator.dtype=bfloat16")
    assert result.exit_code == 0, result.output
    verify(tmp_path / "shards", class_names=list(DIGIT_NAMES))
    info = json.loads((tmp_path / "shards" / "build.json").read_text())
    assert info["config"]["generator"]["dtype"] == "bfloat16"
    sample = ShardRandomAccess(tmp_path / "shards").sample(0)
    assert sample.provenance["generator"]["dtype"] == "bfloat16"
    assert sample.provenance["guidance"]["adversarial"] and sample.provenance["guidance"]["contrastive"]
