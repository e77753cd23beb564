"""``actgen.fitting.fit``: a generator fitted from scratch loads through the builder's loader and
renders; resume continues the same loss curve exactly, and refuses a checkpoint holding pickled
code unread; the config rejects bad values."""
from __future__ import annotations

import json

import pytest
import torch

from actgen.builder.config import GuidanceConfig
from actgen.builder.generator import DiffusersGenerator
from actgen.builder.sampler import GuidedSampler
from actgen.fitting.config import checkpoint_path, load_fit_config
from actgen.fitting.data import prompt_vocabulary
from actgen.fitting.fit import run
from actgen.fitting.train_step import diffusion_loss, lr_factor, min_snr_weight
from actgen.shards.fit_record import FIT_RECORD_FILE
from actgen.shards.sources import DIGIT_NAMES

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny_fit_config(tiny_fit):
    """Factory: ``tiny_fit_config(output, *overrides) -> FitConfig``: 8x8 digits, a 2-level UNet of
    8/16 channels, 1 text layer, a few steps (conftest's ``tiny_fit``)."""
    def make(output, *overrides):
        return load_fit_config(None, [f"output='{output}'", *tiny_fit, *overrides])

    return make


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_fit_config):
    """A finished tiny fit on the embedded digits: ``(result, output directory)``."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("fit") / "gen"
    return run(tiny_fit_config(out)), out


def test_fitted_generator_loads_through_the_builder_and_renders(fitted):
    result, out = fitted
    assert result.finished and result.step == 6 and len(result.losses) == 6
    assert all(torch.isfinite(torch.tensor(result.losses)))
    record = json.loads((out / FIT_RECORD_FILE).read_text())
    assert record["steps"] == 6 and record["seed"] == 0 and record["losses"] == pytest.approx(result.losses, abs=1e-6)
    assert record["data"]["class_names"] == list(DIGIT_NAMES) and len(record["data"]["fingerprint"]) >= 12
    assert record["prompts"][3] == "a photo of three"
    assert result.grids and result.grids[-1].name == "step-000006.png" and result.grids[-1].is_file()

    res = record["builder_settings"]["generator.attention_resolution"]
    gen = DiffusersGenerator.from_pretrained(str(out), device="cpu", attention_resolution=res)
    # The saved weights are the EMA weights the record hashes: save and load lose nothing.
    assert gen.weights_hash() == record["weights_sha256"]
    assert gen.image_size == 8 and gen.latent_shape == (3, 8, 8) and gen.vae_scale_factor == 1
    assert res == 4 and len(gen.attention.layers) == 3          # down_blocks.1 (1) and up_blocks.0 (2)
    # The class name is one whole token of the prompt vocabulary, where the attention mask looks.
    assert gen.token_indices("a photo of seven", "seven") == [4]

    sampler = GuidedSampler(gen, GuidanceConfig(num_steps=2, reference_steps=2, cfg_scale=3.0))
    out_a = sampler.sample(["a photo of one", "a photo of two"], ["one", "two"], [1, 2], [0, 1], ["txt2img"] * 2)
    assert out_a.images.shape == (2, 3, 8, 8) and torch.isfinite(out_a.images).all()
    # Attention is captured at the configured side over the prompt's tokens.
    gen.predict_noise(torch.zeros(1, 3, 8, 8), 50, gen.embed_prompts(["a photo of one"]), capture_attention=True)
    mask = gen.attention.mask([[4]], cfg_halves=1)               # the class token "one"
    assert mask.shape == (1, 4, 4) and torch.isfinite(mask).all() and mask.sum() > 0


def test_autoencoder_is_a_deterministic_near_identity(fitted):
    _, out = fitted
    gen = DiffusersGenerator.from_pretrained(str(out), device="cpu", attention_resolution=4)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    z1 = gen.encode_image(x, gens)
    z2 = gen.encode_image(x, [torch.Generator().manual_seed(i + 7) for i in range(2)])
    assert torch.allclose(z1, z2, atol=1e-5)                    # pinned variance: no sampling noise
    assert z1.shape == x.shape


def test_resume_continues_the_same_loss_curve(fitted, tiny_fit_config, tmp_path):
    full, full_dir = fitted
    half_dir = tmp_path / "gen"
    first = run(tiny_fit_config(half_dir), stop_after=3)
    assert first.step == 3 and not first.finished and not (half_dir / FIT_RECORD_FILE).exists()
    assert first.losses == full.losses[:3]
    with pytest.raises(FileExistsError, match="resume"):
        run(tiny_fit_config(half_dir))
    second = run(tiny_fit_config(half_dir), resume=True)
    assert second.finished and second.losses == full.losses     # bit-identical, not approximately
    a = json.loads((full_dir / FIT_RECORD_FILE).read_text())
    b = json.loads((half_dir / FIT_RECORD_FILE).read_text())
    assert a["weights_sha256"] == b["weights_sha256"]


def test_resume_refuses_another_config(tiny_fit_config, tmp_path):
    run(tiny_fit_config(tmp_path / "g"), stop_after=2)
    with pytest.raises(ValueError, match="train.lr"):
        run(tiny_fit_config(tmp_path / "g", "train.lr=0.01"), resume=True)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="model.attention_resolution"):
        load_fit_config(None, ["output=x", "model.image_size=8", "model.attention_resolution=2"])
    with pytest.raises(ValueError, match="bogus"):
        load_fit_config(None, ["output=x", "train.bogus=1"])
    with pytest.raises(ValueError, match="output"):
        load_fit_config(None, [])
    with pytest.raises(ValueError, match="model.image_size"):
        load_fit_config(None, ["output=x", "model.image_size=6", "model.block_out_channels=[8,16,32]"])


def test_attention_only_at_the_capture_side_keeps_the_builder_working(tiny_fit_config, tmp_path):
    # model.attention_sides=[4]: the 8x8 blocks are plain resnet blocks (the costliest attention
    # of a small UNet gone), the 4x4 ones still attend to the class tokens, and the builder loads
    # the generator, captures its attention there and renders.
    out = tmp_path / "gen"
    result = run(tiny_fit_config(out, "model.attention_sides=[4]"))
    assert result.finished and all(torch.isfinite(torch.tensor(result.losses)))
    unet_cfg = json.loads((out / "unet" / "config.json").read_text())
    assert unet_cfg["down_block_types"] == ["DownBlock2D", "CrossAttnDownBlock2D"]
    assert unet_cfg["up_block_types"] == ["CrossAttnUpBlock2D", "UpBlock2D"]
    assert unet_cfg["mid_block_type"] == "UNetMidBlock2DCrossAttn"
    gen = DiffusersGenerator.from_pretrained(str(out), device="cpu", attention_resolution=4)
    attn_blocks = {name.split(".attentions")[0] for name, _ in gen.unet.named_modules() if ".attentions." in name}
    assert attn_blocks == {"down_blocks.1", "mid_block", "up_blocks.0"}
    assert len(gen.attention.layers) == 3
    gen.predict_noise(torch.zeros(1, 3, 8, 8), 50, gen.embed_prompts(["a photo of one"]), capture_attention=True)
    mask = gen.attention.mask([[4]], cfg_halves=1)
    assert mask.shape == (1, 4, 4) and torch.isfinite(mask).all() and mask.sum() > 0
    sampler = GuidedSampler(gen, GuidanceConfig(num_steps=2, reference_steps=2, cfg_scale=3.0))
    guide = torch.rand(1, 3, 8, 8) * 2 - 1
    rendered = sampler.sample(["a photo of one"], ["one"], [1], [0], ["actgen"], guides=guide, record_masks=True)
    assert rendered.images.shape == (1, 3, 8, 8) and torch.isfinite(rendered.images).all()
    # The builder needs attention where it captures: a list without that side is refused.
    with pytest.raises(ValueError, match="model.attention_sides.*capture side 4"):
        tiny_fit_config(tmp_path / "bad", "model.attention_sides=[8]")
    with pytest.raises(ValueError, match="model.attention_sides"):
        tiny_fit_config(tmp_path / "bad", "model.attention_sides=[2,4]")


def test_min_snr_weighting_down_weights_only_the_nearly_clean_timesteps():
    abar = torch.tensor([0.999, 0.9, 5 / 6, 0.5, 0.01], dtype=torch.float64)    # SNR 999, 9, 5, 1, 0.0101
    w = min_snr_weight(abar, 5.0)
    assert w.tolist() == pytest.approx([5 / 999, 5 / 9, 1.0, 1.0, 1.0], rel=1e-5)
    v = min_snr_weight(abar, 5.0, "v_prediction")                  # min(SNR, 5) / (SNR + 1)
    assert v.tolist() == pytest.approx([5 / 1000, 0.5, 5 / 6, 0.5, 0.0101 / 1.0101], rel=1e-4)
    # The same error on a nearly clean and a noisy sample: the weighted loss's gradient on the
    # clean one shrinks by its weight, the noisy one's is that of the plain mean.
    pred = torch.ones(2, 3, 2, 2, requires_grad=True)
    batch = {"target": torch.zeros(2, 3, 2, 2), "weight": min_snr_weight(abar[[0, 4]], 5.0).float()}
    diffusion_loss(pred, batch).backward()
    plain = torch.ones(2, 3, 2, 2, requires_grad=True)
    diffusion_loss(plain, {"target": batch["target"]}).backward()
    assert torch.allclose(pred.grad[1], plain.grad[1])
    assert torch.allclose(pred.grad[0], plain.grad[0] * 5 / 999)


def test_fit_with_min_snr_trains_on_the_same_draws_with_another_loss(fitted, tiny_fit_config, tmp_path):
    full, _ = fitted
    snr = run(tiny_fit_config(tmp_path / "snr", "train.snr_gamma=5"), stop_after=2)
    # Same init and draws; the first step's loss is the weighted one, so lower than the plain
    # MSE (every weight is at most 1) and not equal to it.
    assert snr.losses[0] < full.losses[0]
    with pytest.raises(ValueError, match="train.snr_gamma"):
        tiny_fit_config(tmp_path / "bad", "train.snr_gamma=0")


def test_pure_pieces():
    assert prompt_vocabulary("a photo of {}", ["aquarium_fish", "Cat"]) == ["a", "photo", "of", "aquarium", "fish", "cat"]
    assert lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_cli_fits_and_reports_bad_input(tiny_fit, tmp_path):
    from click.testing import CliRunner

    from actgen.fitting.cli import main

    sets = [a for o in tiny_fit for a in ("--set", o)]
    ok = CliRunner().invoke(main, ["--output", str(tmp_path / "g"), *sets, "--set", "train.steps=2"])
    assert ok.exit_code == 0, ok.output
    assert "fitted in 2 steps" in ok.output and (tmp_path / "g" / "unet").is_dir()
    again = CliRunner().invoke(main, ["--output", str(tmp_path / "g"), *sets, "--set", "train.steps=2"])
    assert again.exit_code == 2 and "--resume" in again.output
    bad = CliRunner().invoke(main, ["--output", str(tmp_path / "h"), "--set", "train.nope=1"])
    assert bad.exit_code == 2 and "train.nope" in bad.output


class _Marker:
    """Unpickling this creates ``path`` (``open(path, "w")``): what a crafted checkpoint could run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_resume_refuses_a_checkpoint_with_pickled_code(tiny_fit, tmp_path):
    from click.testing import CliRunner

    from actgen.fitting.cli import main

    # The crafted file is live: an unrestricted torch.load runs it.
    probe = tmp_path / "probe.pt"
    torch.save({"step": 1, "losses": _Marker(tmp_path / "probe-ran")}, probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "probe-ran").exists()

    out = tmp_path / "g"
    marker = tmp_path / "pwned"
    checkpoint_path(out).parent.mkdir(parents=True)
    torch.save({"step": 1, "losses": _Marker(marker)}, checkpoint_path(out))
    sets = [a for o in tiny_fit for a in ("--set", o)]
    res = CliRunner().invoke(main, ["--output", str(out), *sets, "--resume"])
    assert res.exit_code == 2, res.output
    assert not marker.exists()
    errors = [line for line in res.output.splitlines() if line.startswith("actgen-fit-generator:")]
    assert len(errors) == 1 and errors[0].startswith("actgen-fit-generator: error: "), res.output
    assert str(checkpoint_path(out)) in errors[0] and "weights_only=True" in errors[0]


def test_time_box_stops_early_and_still_writes_the_generator(tiny_fit_config, tmp_path):
    # A box of a millisecond ends after the first step: the generator and its record are written
    # from the steps done, which the record counts (not train.steps).
    out = tmp_path / "boxed"
    result = run(tiny_fit_config(out, "train.max_seconds=0.001"))
    assert result.finished and result.step == 1 and len(result.losses) == 1
    record = json.loads((out / FIT_RECORD_FILE).read_text())
    assert record["steps"] == 1 < record["config"]["train"]["steps"]
    assert (out / "unet" / "config.json").is_file()
    with pytest.raises(ValueError, match="train.max_seconds"):
        tiny_fit_config(tmp_path / "bad", "train.max_seconds=0")
