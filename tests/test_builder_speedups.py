"""``generator.compile`` and ``generator.channels_last``: the same images (within float rounding) as
without them, every mode and guidance term included, and recorded where a data set says how it was
rendered without being settings that decide the images."""
from __future__ import annotations

import json

import pytest
import torch

from actgen.builder.bank import MemoryBank
from actgen.builder.config import GuidanceConfig
from actgen.builder.tiny import build_tiny_generator
from actgen.builder.sampler import GuidedSampler

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _render(generator, classifier, class_names):
    """Every mode and guidance term in one batch: txt2img, img2img, actgen with the mask, the bank
    and the adversarial decode (the VAE decoder with gradients)."""
    names = ["cat", "dog", "cat"]
    labels = [class_names.index(n) for n in names]
    bank = MemoryBank(capacity=8, sample_size=8)
    bank.add([labels[0]], torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5)))
    guides = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sampler = GuidedSampler(generator, GuidanceConfig(num_steps=4, reference_steps=4, guidance_steps=2, margin=1e4),
                            classifier, bank)
    return sampler.sample([f"a photo of {n}" for n in names], names, labels, [1, 2, 3],
                          ["txt2img", "img2img", "actgen"], adversarial=[False, False, True], guides=guides)


@pytest.fixture(scope="module")
def reference(tiny_guidance_classifier, builder_class_names):
    return _render(build_tiny_generator(seed=0), tiny_guidance_classifier, builder_class_names)


def test_channels_last_renders_the_same_images(reference, tiny_guidance_classifier, builder_class_names):
    generator = build_tiny_generator(seed=0)
    before = generator.weights_hash()
    generator.weights_changed()
    generator.speed_up(channels_last=True)
    assert generator.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert generator.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert generator.weights_hash() == before                      # the same weights, another layout
    out = _render(generator, tiny_guidance_classifier, builder_class_names)
    torch.testing.assert_close(out.images, reference.images, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.latents, reference.latents, atol=1e-4, rtol=1e-4)
    assert (generator.compiled, generator.channels_last) == ("none", True)
    with pytest.raises(RuntimeError, match="already applied"):
        generator.speed_up(compile="unet")


def test_bad_compile_target_is_named():
    from actgen.builder.config import load_config

    with pytest.raises(ValueError, match="compile='vae'"):
        build_tiny_generator(seed=0).speed_up(compile="vae")
    paths = ["checkpoint=c", "manifest=m", "output.path=o"]
    with pytest.raises(ValueError, match=r"'generator.compile': Invalid value 'vae'"):
        load_config(None, [*paths, "generator.compile=vae"])
    with pytest.raises(ValueError, match=r"'generator.channel_last'"):
        load_config(None, [*paths, "generator.channel_last=true"])
    cfg = load_config(None, [*paths, "generator.compile=unet+vae", "generator.channels_last=true"])
    assert (cfg.generator.compile, cfg.generator.channels_last) == ("unet+vae", True)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager"])
def test_compiled_unet_and_vae_decoder_render_the_same_images(tiny_guidance_classifier, builder_class_names, backend):
    # Dynamo traces the UNet's forward and backward and the VAE decoder's, in place. The test
    # traces with aot_eager: the same graphs, modules and keys as inductor without generating
    # code (inductor on this CPU took about 3 minutes cold; the GPU check times it). Every row
    # guided at every step, so the UNet is compiled once (one batch shape, one grad mode); the
    # decoder twice (the adversarial decode with gradients, the final one without).
    names = ["cat", "dog"]
    labels = [builder_class_names.index(n) for n in names]
    guides = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cfg = GuidanceConfig(num_steps=3, reference_steps=3, guidance_steps=3, margin=1e4)

    def render(generator):
        bank = MemoryBank(capacity=8, sample_size=8)
        bank.add(labels, torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(5)))
        sampler = GuidedSampler(generator, cfg, tiny_guidance_classifier, bank)
        return sampler.sample([f"a photo of {n}" for n in names], names, labels, [1, 2], ["actgen"] * 2,
                              adversarial=[True, True], guides=guides)

    reference = render(build_tiny_generator(seed=0))
    generator = build_tiny_generator(seed=0)
    before = generator.weights_hash()
    generator.weights_changed()
    generator.speed_up(compile="unet+vae", backend=backend)
    assert generator.unet._compiled_call_impl is not None and generator.vae.decoder._compiled_call_impl is not None
    assert generator.weights_hash() == before                      # in-place compile: same state-dict keys
    out = render(generator)
    torch.testing.assert_close(out.images, reference.images, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.latents, reference.latents, atol=1e-4, rtol=1e-4)


def test_speed_ups_are_recorded_but_are_not_settings(build_config, tmp_path):
    from actgen.builder.outputs import BUILD_FILE
    from actgen.builder.pipeline import run
    from actgen.shards.reader import ShardRandomAccess

    out = tmp_path / "shards"
    first = run(build_config("generator.channels_last=true", "budget=2", output=out))
    sample = ShardRandomAccess(out).sample(0)
    assert sample.provenance["generator"]["channels_last"] is True
    assert sample.provenance["generator"]["compile"] == "none" and sample.provenance["generator"]["family"] == "sd"
    build = json.loads((out / BUILD_FILE).read_text())
    assert build["config"]["generator"]["channels_last"] is True
    assert "channels_last" not in build["settings"]["generator"]
    # Like the device, they change how fast, not what: the finished build is the same build.
    again = run(build_config("generator.channels_last=false", "budget=2", output=out))
    assert again.rendered == [] and again.index == first.index
