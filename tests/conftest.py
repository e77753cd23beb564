"""Shared pytest fixtures. Sections are owned by the package they serve; append, don't rewrite."""
from __future__ import annotations

import contextlib

import functools
import http.server
import os
import secrets
import threading
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _restore_logging():
    """Every CLI configures the root logger (onto CliRunner's stream in tests); put it back."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


# --------------------------------------------------------------------------------------------
# shards: tiny synthetic samples, a finished shard data set, a local HTTP server

SHARDS_CLASS_NAMES = ["cat", "dog", "bird"]


def _make_synthetic_samples(n: int, class_names=SHARDS_CLASS_NAMES, size=(12, 16), round: int = 1,
                            seed: int = 0) -> list:
    """``n`` SyntheticSample with random RGB images (H, W = ``size``) and full provenance."""
    from PIL import Image

    from actgen.shards.samples import SyntheticSample, make_key

    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        label = i % len(class_names)
        source_id = f"{'ab' * 6}-{i:08d}"
        pixels = rng.integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8)
        provenance = {
            "class_name": class_names[label], "source_id": source_id,
            "generator": {"id": "tiny-test", "weights_sha256": "0" * 64},
            "prompt": f"a photo of a {class_names[label]}", "seed": 1000 + i,
            "guidance": {"scale": 1.5, "steps": 2}, "checkpoint_sha256": "1" * 64,
            "round": round, "tool_version": "test",
        }
        samples.append(SyntheticSample(key=make_key(round, source_id, i, 1000 + i),
                                       image=Image.fromarray(pixels, "RGB"), label=label,
                                       provenance=provenance))
    return samples


@pytest.fixture
def make_synthetic_samples():
    """Factory: ``make_synthetic_samples(n, class_names=..., size=(H, W), round=1, seed=0)``."""
    return _make_synthetic_samples


@pytest.fixture
def shard_dataset(tmp_path):
    """A finished data set: 10 PNG samples of 3 classes in 3 shards -> ``(directory, index, samples)``."""
    from actgen.shards.writer import ShardSetWriter

    directory = tmp_path / "synth"
    samples = _make_synthetic_samples(10)
    writer = ShardSetWriter(directory, SHARDS_CLASS_NAMES, total=len(samples), num_shards=3,
                            created={"round": 1})
    for sample in samples:
        writer.write(sample)
    index = writer.close()
    return directory, index, samples


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep test output clean
        pass


@pytest.fixture
def serve_directory(monkeypatch):
    """Factory: ``serve_directory(path) -> "http://127.0.0.1:PORT"`` (threaded server, stopped after the test)."""
    # curl (WebDataset) and urllib must not send loopback requests to a proxy.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    servers = []

    def serve(path: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(path))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------------------------
# builder: a tiny random Stable-Diffusion-architecture generator and a tiny timm classifier

BUILDER_CLASS_NAMES = ["cat", "dog", "ship", "aquarium_fish"]


@pytest.fixture(scope="session")
def tiny_generator():
    """Random-weight SD-architecture generator (32x32 images, 4x16x16 latents, 8x8 attention).

    Shared by the session: tests must not change its weights or processors.
    """
    from actgen.builder.tiny import build_tiny_generator

    return build_tiny_generator(seed=0)


@pytest.fixture(scope="session")
def tiny_guidance_classifier():
    """A random timm ``test_resnet`` over BUILDER_CLASS_NAMES, logits x10 so the CE reacts visibly."""
    import timm
    import torch

    from actgen.builder.sampler import GuidanceClassifier

    class _Scale(torch.nn.Module):
        def forward(self, x):
            return 10.0 * x

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        timm.create_model("test_resnet", pretrained=False, num_classes=len(BUILDER_CLASS_NAMES)), _Scale())
    return GuidanceClassifier(model=model, input_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


# --------------------------------------------------------------------------------------------
# trainer: a tiny digits config and synthetic "builder output" made of noisy digits

TRAINER_TINY_OVERRIDES = (
    "data.source.path=builtin:digits", "data.test_fraction=0.5", "data.holdout_fraction=0.1",
    "input.image_size=16", "input.crop=pad", "input.pad=2", "input.hflip=0.0",
    "input.mean=[0.5,0.5,0.5]", "input.std=[0.5,0.5,0.5]",
    "loader.batch_size=64", "loader.eval_batch_size=256", "model.name=test_resnet",
    "optim.lr=0.05", "train.epochs=4", "train.device=cpu", "train.log_interval=5", "train.progress=false",
    "synthetic.on_missing=skip",
    # The paper's search, which most round tests are written on (the default searches the
    # training images: tests/test_compare_conditions.py, test_trainer_config.py).
    "rounds.search=holdout", "rounds.selection.rule=misclassified", "rounds.selection.k=null",
)


@pytest.fixture
def tiny_train_config(tmp_path):
    """Factory: ``tiny_train_config(*overrides, run_dir=None) -> Config`` (digits, test_resnet at
    16x16, 4 epochs: rounds after epochs 0 and 1, hold-out merged at epoch 2)."""
    from actgen.trainer.config import load_config

    def make(*overrides: str, run_dir=None):
        run_dir = run_dir or tmp_path / "run"
        return load_config(None, [*TRAINER_TINY_OVERRIDES, f"run_dir={run_dir}", *overrides])

    return make


def _write_digit_shards(directory, n: int = 24, round: int = 0, seed: int = 0, source_ids=None,
                        class_names=None, num_shards: int = 2):
    """A finished synthetic data set of ``n`` noisy 8x8 digits (labels = the digits' labels)."""
    from PIL import Image

    from actgen.shards.samples import SyntheticSample, make_key
    from actgen.shards.sources import DIGIT_NAMES, DataSource, load_source
    from actgen.shards.writer import ShardSetWriter

    names = list(class_names or DIGIT_NAMES)
    digits = load_source(DataSource())
    rng = np.random.default_rng(seed)
    rows = [digits.index_of(s) for s in source_ids] if source_ids else list(range(n))
    with ShardSetWriter(directory, names, total=len(rows), num_shards=min(num_shards, len(rows)),
                        created={"round": round}) as writer:
        for i, row in enumerate(rows):
            pixels = np.asarray(digits.image(row), dtype=np.float32)
            pixels = np.clip(pixels + rng.normal(0, 20, pixels.shape), 0, 255).astype(np.uint8)
            label = digits.label(row) % len(names)
            source_id = digits.sample_id(row)
            provenance = {"class_name": names[label], "source_id": source_id,
                          "generator": {"id": "noisy-digits", "weights_sha256": "0" * 64},
                          "prompt": f"a photo of {names[label]}", "seed": seed * 100_000 + i,
                          "guidance": {"noise_std": 20}, "checkpoint_sha256": "1" * 64, "round": round,
                          "tool_version": "test"}
            writer.write(SyntheticSample(key=make_key(round, source_id, i, seed * 100_000 + i),
                                         image=Image.fromarray(pixels, "RGB"), label=label, provenance=provenance))
    return directory


@pytest.fixture
def write_digit_shards():
    """Factory: ``write_digit_shards(directory, n=24, round=0, seed=0, source_ids=None, class_names=None)``
    writes a finished shard data set of noisy digit images (a stand-in for actgen-build)."""
    return _write_digit_shards


@pytest.fixture
def torch_one_thread():
    """Run a test's CPU training on one intra-op thread: on a shared 2-core machine, two OpenMP
    threads spin-wait on each other whenever another process takes a core, and a test that takes
    seconds alone can take minutes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# build: a trainer round directory (classifier bundle + hard-sample manifest over builtin:digits)
# for actgen-build runs, and fast build configs

BUILD_FAST = (
    "generator.path=tiny", "guidance.num_steps=3", "guidance.reference_steps=3", "guidance.guidance_steps=1",
    "guidance.guidance_strength=1.5", "batch_size=2", "output.samples_per_shard=2", "output.contact_sheet=4",
    "ray.executor=local", "bank_scope=run",
    # Build mechanics (shards, bank, provenance, resume) are checked on the paper's rule, where every
    # image has a guide; the default `balanced` policy is tested in test_build_allocation.py.
    "allocation.policy=paper",
)


def _write_round(directory, class_names=None, num_hard: int = 5, round: int = 1, input_size: int = 16,
                 weights_seed: int = 0):
    """``directory/checkpoint`` (random timm ``test_resnet`` bundle) and ``directory/hard_samples.json``
    (``num_hard`` digits rows, recorded as misclassified) -> ``(directory, checkpoint sha256)``."""
    import dataclasses

    import timm
    import torch

    from actgen.shards.bundle import BundleConfig, write_bundle
    from actgen.shards.manifest import HardSample, HardSampleManifest, ManifestHeader, write_manifest
    from actgen.shards.sources import DataSource, load_source

    images = load_source(DataSource())
    names = list(class_names or images.class_names)
    torch.manual_seed(weights_seed)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=len(names))
    sha = write_bundle(directory / "checkpoint", model.state_dict(), BundleConfig(
        architecture="test_resnet", num_classes=len(names), class_names=names, input_size=(3, input_size, input_size),
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear",
        dataset_fingerprint=images.fingerprint, round=round, epoch=round))
    rows = range(0, 13 * num_hard, 13)
    samples = [HardSample(id=images.sample_id(i), label=images.label(i),
                          class_name=images.class_names[images.label(i)], predicted=(images.label(i) + 1) % 10,
                          prob_true=0.1, loss=2.3) for i in rows]
    header = ManifestHeader(dataset=dataclasses.asdict(images.source), dataset_fingerprint=images.fingerprint,
                            class_names=images.class_names, split_seed=0, holdout_fraction=0.1, num_evaluated=180,
                            checkpoint_sha256=sha, round=round, epoch=round)
    write_manifest(directory / "hard_samples.json", HardSampleManifest(header=header, samples=samples))
    return directory, sha


@pytest.fixture(scope="session")
def build_fast():
    """The fast build settings (``--set`` dotlist) every build test starts from."""
    return BUILD_FAST


def _arch_build(round_dir, generator, output, *overrides: str):
    from click.testing import CliRunner

    from actgen.builder.cli import main

    args = ["--checkpoint", str(round_dir / "checkpoint"), "--manifest", str(round_dir / "hard_samples.json"),
            "--output", str(output)]
    for o in (f"generator.path={generator}", "generator.device=cpu", "guidance.num_steps=2",
              "guidance.reference_steps=2", "guidance.guidance_steps=1", "guidance.bank_sample_size=4",
              "batch_size=1", "output.contact_sheet=0", "ray.executor=local", "bank_scope=worker",
              "allocation.policy=paper", *overrides):
        args += ["--set", o]
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.fixture(scope="session")
def arch_build():
    """``arch_build(round_dir, generator_dir, output, *overrides) -> click Result``: ``actgen-build``
    in-process on a real architecture's generator folder, as cheaply as the mechanics allow (2 steps,
    1 guided, batch 1, local executor, the bank per worker so a second render of a guide meets the
    first); the paper's allocation, since these tests check guided renders. ``overrides`` add the
    budget, the mode, the dtype."""
    return _arch_build


@pytest.fixture(scope="session")
def write_round():
    """``write_round(directory, class_names=None, num_hard=5, round=1, input_size=16, weights_seed=0)``:
    a round folder (bundle + manifest) -> ``(directory, checkpoint sha256)``."""
    return _write_round


@pytest.fixture(scope="session")
def builder_class_names():
    return list(BUILDER_CLASS_NAMES)


@pytest.fixture(scope="session")
def build_round(tmp_path_factory):
    """A round directory (``checkpoint/``, ``hard_samples.json``) of round 1 over builtin:digits with
    5 hard samples. Shared: tests must write their output elsewhere."""
    directory, _ = _write_round(tmp_path_factory.mktemp("round") / "1")
    return directory


@pytest.fixture
def build_config(build_round, tmp_path):
    """Factory: ``build_config(*overrides, output=None) -> BuildConfig`` over ``build_round``, tiny
    generator, 3 steps, local executor, 2 images per shard; output defaults to ``tmp_path/shards``."""
    from actgen.builder.config import load_config

    def make(*overrides: str, output=None):
        return load_config(None, [f"checkpoint={build_round / 'checkpoint'}",
                                  f"manifest={build_round / 'hard_samples.json'}",
                                  f"output.path={output or tmp_path / 'shards'}", "budget=6", *BUILD_FAST,
                                  *overrides])

    return make


# --------------------------------------------------------------------------------------------
# fitting: the smallest generator fit that still exercises every part of actgen-fit-generator

TINY_FIT = ("model.image_size=8", "model.block_out_channels=[8,16]", "model.attention_head_dim=4",
            "model.cross_attention_dim=16", "model.text_layers=1", "model.text_max_length=8",
            "model.autoencoder_channels=8", "train.batch_size=8", "train.steps=6", "train.warmup_steps=2",
            "train.autoencoder_steps=4", "train.log_every=2", "train.sample_every=0",
            "train.checkpoint_every=2", "train.progress=false", "sample.per_class=1", "sample.num_steps=2",
            "num_train_timesteps=100")


@pytest.fixture(scope="session")
def tiny_fit():
    """Dotlist overrides for a 6-step fit of an 8x8 generator (seconds on the CPU)."""
    return TINY_FIT


# --------------------------------------------------------------------------------------------
# Ray: a head on loopback that a build or a comparison joins (it did not start it)

_RAY_TOKEN = secrets.token_hex(16)


def ray_env(**extra) -> dict:
    """The environment of a loopback Ray cluster's nodes and drivers: Ray >= 2.59 authenticates
    with a token they share (as on a real cluster)."""
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": _RAY_TOKEN,
            **extra}


@contextlib.contextmanager
def ray_head_cluster(num_cpus: int = 2):
    """``ray start --head`` on 127.0.0.1 with ``num_cpus``; ``ray stop --force`` afterwards (stopping
    every node of this machine), whatever happened. Yields its address; the processes that join it
    need ``ray_env()``."""
    import shutil
    import socket
    import subprocess
    import sys
    import tempfile

    ray = Path(sys.executable).parent / "ray"
    if not ray.is_file():
        pytest.skip(f"{ray} absent")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Ray's socket paths live under its temp dir and may not exceed 107 bytes: a short one.
    temp = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")
    env = ray_env()
    subprocess.run([str(ray), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                    f"--num-cpus={num_cpus}", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                   check=True, timeout=180, env=env, stdout=subprocess.DEVNULL)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(ray), "stop", "--force"], timeout=120, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def ray_head():
    """A loopback Ray head with 2 CPUs (:func:`ray_head_cluster`)."""
    with ray_head_cluster(2) as address:
        yield address
