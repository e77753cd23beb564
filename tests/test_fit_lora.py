"""``actgen.fitting.lora``: LoRA fine-tuning of the tiny random SD pipeline changes only the adapted
projections, and the fused result loads through the builder's loader and renders. The fit streams
(a step decodes exactly its batch x accumulation images, in a seeded order), accumulation matches
one big batch, bf16 runs on the CPU and still saves float32, and an interrupted fit resumed from
its safetensors checkpoint ends bit-identical to an uninterrupted one."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from actgen.builder.config import GuidanceConfig
from actgen.builder.generator import DiffusersGenerator
from actgen.builder.tiny import build_tiny_generator
from actgen.builder.sampler import GuidedSampler
from actgen.fitting import lora as lora_module
from actgen.fitting.config import load_lora_config, lora_checkpoint_path
from actgen.fitting.data import StreamedImages, stream_loader
from actgen.fitting.lora import ADAPTER_DIR, run_lora
from actgen.fitting.train_step import accumulated_step
from actgen.shards.errors import FormatError
from actgen.shards.fit_record import FIT_RECORD_FILE
from actgen.shards.sources import load_source

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER_FILE = f"{ADAPTER_DIR}/pytorch_lora_weights.safetensors"


def _cfg(output, *overrides):
    """2 steps of 2 micro-batches of 1 image on the tiny generator (32x32, 16x16 latents), CPU."""
    return load_lora_config(None, [f"output='{output}'", "steps=2", "batch_size=1", "grad_accumulation=2",
                                   "lr=0.01", "warmup_steps=1", "log_every=1", "device=cpu", "progress=false",
                                   *overrides])


class _Counting:
    """A LabeledImages that records every image it decodes."""

    def __init__(self, data):
        self.data, self.decoded = data, []

    def __getattr__(self, name):
        return getattr(self.data, name)

    def __len__(self):
        return len(self.data)

    def image(self, index):
        self.decoded.append(index)
        return self.data.image(index)


@pytest.mark.slow
def test_lora_changes_only_adapted_projections_and_the_result_loads(tmp_path):
    base = build_tiny_generator(seed=0)
    before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    vae_before = {k: v.clone() for k, v in base.vae.state_dict().items()}
    text_before = {k: v.clone() for k, v in base.text_encoder.state_dict().items()}
    cfg = load_lora_config(None, [f"output='{tmp_path / 'g'}'", "steps=3", "batch_size=2", "lr=0.01",
                                  "warmup_steps=1", "log_every=1", "device=cpu"])
    result = run_lora(cfg, base=base)
    assert result.finished and result.step == 3 and result.precision == torch.float32   # auto on the CPU
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
    with pytest.raises(ValueError, match="grad_accumulation"):
        load_lora_config(None, ["output=x", "grad_accumulation=0"])
    with pytest.raises(ValueError, match="precision.*fp16"):
        load_lora_config(None, ["output=x", "device=cpu", "precision=fp16"])
    with pytest.raises(ValueError, match="precision"):
        load_lora_config(None, ["output=x", "precision=float64"])
    with pytest.raises(ValueError, match="num_workers"):
        load_lora_config(None, ["output=x", "num_workers=-1"])
    with pytest.raises(ValueError, match="checkpoint_every"):
        load_lora_config(None, ["output=x", "checkpoint_every=0"])


def test_lora_streams_exactly_the_images_of_each_step(tmp_path, monkeypatch, caplog):
    # Memory is O(batch): a step decodes batch_size x grad_accumulation images, never the data set.
    real = load_source(load_lora_config(None, ["output=x"]).data)
    counting = _Counting(real)
    monkeypatch.setattr(lora_module, "load_source", lambda source: counting)
    cfg = _cfg(tmp_path / "g", "steps=3")
    with caplog.at_level("INFO", logger="actgen.fitting.lora"):
        first = run_lora(cfg, stop_after=1)
    assert first.step == 1 and not first.finished and len(counting.decoded) == 1 * 2
    assert not (tmp_path / "g" / FIT_RECORD_FILE).exists() and lora_checkpoint_path(tmp_path / "g").is_file()
    # Not a terminal: one fixed-format line per log_every steps.
    assert any(r.getMessage().startswith("lora step 1/3  loss ") and "img/s" in r.getMessage()
               for r in caplog.records)
    second = run_lora(cfg, resume=True)
    assert second.finished and second.step == 3 and len(counting.decoded) == 3 * 2
    # The resumed fit continued the stream where the first stopped: the seeded order, no repeats.
    stream = StreamedImages(real, 32, cfg.seed)
    assert counting.decoded == [stream.index(p) for p in range(6)] and len(set(counting.decoded)) == 6


class _Fake:
    """A LabeledImages of ``n`` constant images whose value is their row."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def labels(self):
        return [i % 3 for i in range(self.n)]

    def image(self, index):
        from PIL import Image

        return Image.new("RGB", (5, 7), (index, index, index))


def test_stream_order_is_seeded_and_a_new_permutation_each_epoch():
    n = 10
    stream = StreamedImages(_Fake(n), 4, seed=3)
    order = [stream.index(p) for p in range(3 * n)]
    epochs = [order[i * n:(i + 1) * n] for i in range(3)]
    assert all(sorted(e) == list(range(n)) for e in epochs)      # every image once per epoch
    assert epochs[0] != epochs[1] != epochs[2]
    assert order == [StreamedImages(_Fake(n), 4, seed=3).index(p) for p in range(3 * n)]
    assert order != [StreamedImages(_Fake(n), 4, seed=4).index(p) for p in range(3 * n)]
    # Reading from the middle (a resume) gives what reading through does.
    late = StreamedImages(_Fake(n), 4, seed=3)
    assert [late.index(p) for p in range(25, 30)] == order[25:30]

    batches = list(stream_loader(stream, start=7, size=3, count=2))
    (images, labels, positions), second = batches
    assert images.shape == (3, 3, 4, 4) and images.dtype == torch.uint8
    assert positions.tolist() == [7, 8, 9] and second[2].tolist() == [10, 11, 12]
    rows = [stream.index(p) for p in range(7, 10)]
    assert images[:, 0, 0, 0].tolist() == rows and labels.tolist() == [r % 3 for r in rows]


def test_accumulated_micro_batches_equal_one_big_batch():
    from peft import LoraConfig

    def adapted():
        gen = build_tiny_generator(seed=0)
        torch.manual_seed(1)
        gen.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=list(TARGETS)))
        with torch.no_grad():                # B = 0 at init would leave A without a gradient
            for n, p in gen.unet.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
        return gen.unet.train()

    g = torch.Generator().manual_seed(0)
    big = {"x_t": torch.randn(4, 4, 16, 16, generator=g), "t": torch.randint(1000, (4,), generator=g),
           "cond": torch.randn(4, 77, 32, generator=g), "target": torch.randn(4, 4, 16, 16, generator=g)}
    micro = [{k: v[i:i + 2] for k, v in big.items()} for i in (0, 2)]
    updated, losses = [], []
    for batches, n in (([big], 1), (micro, 2)):
        unet = adapted()
        params = [p for p in unet.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.5)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        losses.append(accumulated_step(unet, iter(batches), n, opt, sched, 1.0, torch.device("cpu")))
        updated.append({k: v.detach().clone() for k, v in unet.named_parameters() if v.requires_grad})
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    start = {k: v for k, v in adapted().named_parameters() if v.requires_grad}
    assert all(not torch.equal(updated[0][k], start[k]) for k in start)     # A and B both moved
    for k in updated[0]:
        torch.testing.assert_close(updated[1][k], updated[0][k], rtol=1e-5, atol=1e-6)

    with pytest.raises(ValueError, match="accumulation=3"):
        accumulated_step(adapted(), iter(micro), 3, opt, sched, 1.0, torch.device("cpu"))


def test_a_sample_draws_the_same_whatever_the_micro_batching(tmp_path):
    # Each sample's draws come from its stream position: 1 x 2 and 2 x 1 see the same first step.
    a = run_lora(_cfg(tmp_path / "a", "steps=1"), stop_after=1)
    b = run_lora(_cfg(tmp_path / "b", "steps=1", "batch_size=2", "grad_accumulation=1"), stop_after=1)
    assert a.losses[0] == pytest.approx(b.losses[0], rel=1e-5)


def test_decoding_in_worker_processes_changes_nothing(tmp_path):
    a = run_lora(_cfg(tmp_path / "a", "steps=3", "batch_size=2"), stop_after=2)
    b = run_lora(_cfg(tmp_path / "b", "steps=3", "batch_size=2", "num_workers=2"), stop_after=2)
    assert a.losses == b.losses


def test_interrupted_and_resumed_fit_is_bit_identical(tmp_path):
    full = run_lora(_cfg(tmp_path / "full", "steps=3"))
    half_dir = tmp_path / "half"
    first = run_lora(_cfg(half_dir, "steps=3"), stop_after=1)
    assert first.losses == full.losses[:1] and not (half_dir / ADAPTER_DIR).exists()
    with pytest.raises(FileExistsError, match="resume"):
        run_lora(_cfg(half_dir, "steps=3"))
    with pytest.raises(ValueError, match="differs at lr"):
        run_lora(_cfg(half_dir, "steps=3", "lr=0.02"), resume=True)
    # How the fit reports and feeds itself may change on a resume; what it computes may not.
    second = run_lora(_cfg(half_dir, "steps=3", "log_every=5", "checkpoint_every=5", "num_workers=1"), resume=True)
    assert second.finished and second.losses == full.losses         # bit-identical, not approximately
    a, b = load_file(tmp_path / "full" / ADAPTER_FILE), load_file(half_dir / ADAPTER_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads((d / FIT_RECORD_FILE).read_text()) for d in (tmp_path / "full", half_dir)]
    assert records[0]["weights_sha256"] == records[1]["weights_sha256"]
    assert records[1]["steps"] == 3 and records[1]["losses"] == pytest.approx(full.losses, abs=1e-6)
    assert records[1]["config"]["grad_accumulation"] == 2 and records[1]["config"]["precision"] == "auto"

    # The checkpoint is one safetensors file: tensors, and the rest as JSON in its header.
    from safetensors import safe_open

    with safe_open(str(lora_checkpoint_path(half_dir)), framework="pt") as f:
        state = json.loads(f.metadata()["actgen.state"])
        assert any(k.startswith("adapter/") for k in f.keys()) and any("exp_avg" in k for k in f.keys())
    assert state["dict"][0] == ["step", 3]


class _Marker:
    """Unpickling this creates ``path``: what a crafted checkpoint could run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_resume_refuses_a_pickled_checkpoint_unread(tmp_path):
    out, marker = tmp_path / "g", tmp_path / "pwned"
    lora_checkpoint_path(out).parent.mkdir(parents=True)
    torch.save({"step": 1, "losses": _Marker(marker)}, lora_checkpoint_path(out))
    with pytest.raises(FormatError, match="not a readable safetensors checkpoint") as e:
        run_lora(_cfg(out), resume=True)
    assert str(lora_checkpoint_path(out)) in str(e.value) and not marker.exists()


def test_bf16_on_the_cpu_trains_and_saves_float32(tmp_path):
    base = build_tiny_generator(seed=0)
    before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    result = run_lora(_cfg(tmp_path / "g", "precision=bf16"), base=base)
    assert result.precision == torch.bfloat16 and all(torch.isfinite(torch.tensor(result.losses)))
    saved = load_file(tmp_path / "g" / "unet" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}
    assert {t.dtype for t in load_file(tmp_path / "g" / ADAPTER_FILE).values()} == {torch.float32}
    # The adapter was fused into the base's float32 weights, not into their bf16 copies.
    changed = {k for k in before if not torch.equal(before[k], saved[k])}
    assert changed and all(any(f".{t}.weight" in k for t in TARGETS) for k in changed), changed


def test_a_stopped_fit_leaves_the_base_as_it_was(tmp_path):
    base = build_tiny_generator(seed=0)
    before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    run_lora(_cfg(tmp_path / "g", "precision=bf16"), base=base, stop_after=1)
    after = base.unet.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_cli_lora_on_the_tiny_pipeline(tmp_path):
    from click.testing import CliRunner

    from actgen.fitting.cli import main

    args = ["--lora", "--output", str(tmp_path / "g"), "--set", "steps=1", "--set", "batch_size=1",
            "--set", "device=cpu"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "LoRA fine-tuned in 1 steps" in res.output and (tmp_path / "g" / "unet").is_dir()
    assert (tmp_path / "g" / "fit.log").is_file()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = CliRunner().invoke(main, [*args, "--resume"])      # finished: writes the same generator again
    assert resumed.exit_code == 0 and "LoRA fine-tuned in 1 steps" in resumed.output, resumed.output
