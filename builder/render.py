"""Render one planned shard and write it: the unit of work a Ray actor (or this process) runs.

The stage between the plan (:mod:`.plan`) and the finished data set (:mod:`.pipeline`): load the
generator (and, for the adversarial term, the classifier), render each planned image with the
guided sampler (:mod:`.sampler`), and stream the samples into one atomic shard.

:class:`ShardWriter` is a callable class in Ray's ``map_batches`` convention: the generator, the
classifier and the guide images are set up once in ``__init__``; each call takes a batch of
shard numbers, renders each shard in sampler batches of ``batch_size`` and streams its samples
into ``shards.writer.write_shard`` (a hidden temporary file, fsync, rename). A call returns only
the shards' records (name, count, sha256, size), never the images, so nothing large travels back
to the driver, and a worker killed mid-shard leaves no shard behind.

The pure pieces (provenance, resizing) are plain functions.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from actgen.shards._schema import jsonable
from actgen.shards.errors import writing
from actgen.shards.portable import portable_path
from actgen.shards.samples import SyntheticSample
from actgen.shards.sources import DataSource, LabeledImages, load_source
from actgen.shards.writer import write_shard

from .bank_store import EMPTY, BankEntries, incremental_start, part_path, save_entries
from .config import TINY, GeneratorConfig, GuidanceConfig
from .plan import BuildPlan, PlannedSample
from .prompts import classifier_crop
from .resident import resident
from .batch_transform import GuidedRenderer
from .sampler import GuidanceClassifier

_logger = logging.getLogger(__name__)

_RESAMPLE = {"bicubic": "BICUBIC", "bilinear": "BILINEAR", "lanczos": "LANCZOS", "nearest": "NEAREST"}


@dataclass(frozen=True)
class RenderSpec:
    """Everything a worker needs, resolved by the driver (picklable, small).

    Attributes:
        plan: the round's work list.
        output_dir: the data-set directory the shards are written into (shared by all workers).
        class_names: names in label order (manifest = checkpoint = data set).
        generator: how to load the generator.
        device: ``cpu`` or ``cuda`` (resolved by the driver for the workers it starts).
        guidance: sampler settings.
        batch_size: images per sampler call.
        bank_scope: ``run`` (each shard starts from ``bank_files``), ``shard`` (an empty bank per
            shard) or ``worker`` (one bank per worker for the build).
        bank_files: the earlier rounds' bank files a shard starts from (``run``), in order.
        dataset, dataset_fingerprint: where the guide images are, and the fingerprint they must have.
        checkpoint, checkpoint_sha256: the classifier bundle (loaded only if some image is adversarial).
        resize_to: stored ``(H, W)``, or None to keep the rendered size.
        resample: PIL filter name for resizing.
        image_format: ``png``, ``jpg`` or ``webp``.
        round, build_seed, tool_version: recorded in provenance.
        expected_generator_sha256: the generator hash recorded in shards kept from an earlier
            attempt; a worker whose generator hashes differently refuses to render.
        prompt_names: each class's prompt name in label order; None: the class names.
        guide_crop: ``(classifier input (H, W), crop_pct)``: guides are the classifier's centre
            crop (``guide_preprocess: classifier``); None: the whole stored image.
    """

    plan: BuildPlan
    output_dir: str
    class_names: tuple[str, ...]
    generator: GeneratorConfig
    device: str
    guidance: GuidanceConfig
    batch_size: int
    bank_scope: str
    dataset: DataSource
    dataset_fingerprint: str
    checkpoint: str
    checkpoint_sha256: str
    resize_to: Optional[tuple[int, int]]
    resample: str
    image_format: str
    round: int
    build_seed: int
    tool_version: str
    expected_generator_sha256: Optional[str] = None
    bank_files: tuple[str, ...] = ()
    prompt_names: Optional[tuple[str, ...]] = None
    guide_crop: Optional[tuple[tuple[int, int], float]] = None

    @property
    def copies(self) -> bool:
        """Whether this build copies its guide images (``mode: copy``) instead of rendering."""
        return any(s.mode == "copy" for s in self.plan.samples)

    @property
    def needs_classifier(self) -> bool:
        return self.guidance.use_adversarial and any(
            s.adversarial and s.mode == "actgen" for s in self.plan.samples)


# -- pure pieces -----------------------------------------------------------------------------


def guidance_record(guidance: GuidanceConfig, sample: PlannedSample, bank_scope: str) -> dict:
    """What guided this image: its mode, the terms it really got, and every sampler setting."""
    actgen = sample.mode == "actgen"
    return jsonable({
        "mode": sample.mode,
        "mask": actgen and guidance.use_mask,
        "contrastive": actgen and guidance.use_contrastive,
        "adversarial": actgen and guidance.use_adversarial and sample.adversarial,
        "bank_scope": bank_scope,
        "settings": asdict(guidance),
    })


def provenance(sample: PlannedSample, prompt: str, generator: dict, spec: RenderSpec,
               rendered_size: int, stored_size: tuple[int, int]) -> dict:
    """The ``json`` member of one image (``shards.samples.REQUIRED_PROVENANCE`` and more)."""
    return {
        "class_name": sample.class_name,
        "label": sample.label,
        "source_id": sample.source_id,
        "role": sample.role,
        "sample_index": sample.index,
        "generator": generator,
        "prompt": prompt,
        "seed": sample.seed,
        "guidance": guidance_record(spec.guidance, sample, spec.bank_scope),
        "checkpoint_sha256": spec.checkpoint_sha256,
        "dataset_fingerprint": spec.dataset_fingerprint,
        "round": spec.round,
        "build_seed": spec.build_seed,
        "rendered_size": [rendered_size, rendered_size],
        "stored_size": list(stored_size),
        "tool_version": spec.tool_version,
    }


def resize_image(image, size: Optional[tuple[int, int]], resample: str):
    """PIL image resized to ``(H, W)`` with the named filter, or unchanged for None."""
    from PIL import Image

    if size is None or (image.height, image.width) == tuple(size):
        return image
    return image.resize((size[1], size[0]), resample=getattr(Image.Resampling, _RESAMPLE[resample]))


# -- loading ---------------------------------------------------------------------------------


def load_generator(cfg: GeneratorConfig, device: str):
    """The generator of ``generator.path`` on ``device`` (``cpu`` or ``cuda``): SD 1.x/2.x or SDXL
    as the folder's UNet config says, with ``generator.compile`` and ``channels_last`` applied."""
    from .tiny import build_tiny_generator
    from .loading import load_pretrained

    if cfg.path == TINY:
        generator = build_tiny_generator(seed=cfg.tiny_seed, image_size=cfg.tiny_image_size, device=device)
    else:
        generator = load_pretrained(cfg.path, device=device, dtype=None if cfg.dtype == "auto" else cfg.dtype,
                                    attention_resolution=cfg.attention_resolution,
                                    local_files_only=cfg.local_files_only)
    generator.speed_up(compile=cfg.compile, channels_last=cfg.channels_last, backend=cfg.compile_backend)
    return generator


def load_guidance_classifier(checkpoint: str, device: str) -> GuidanceClassifier:
    """The bundle's timm model with the input size and normalisation it was trained with."""
    from actgen.shards.bundle import load_classifier

    model, config = load_classifier(checkpoint, device=device)
    return GuidanceClassifier(model=model, input_size=tuple(config.input_size[1:]), mean=tuple(config.mean),
                              std=tuple(config.std))


def generator_key(cfg: GeneratorConfig, device: str) -> tuple:
    """What decides the loaded generator: its settings, the device, and for a local directory
    the identity of its files (a generator refitted into the same folder is loaded again)."""
    from .generator import files_identity

    local = Path(cfg.path).expanduser()
    return (cfg, device, files_identity(local) if cfg.path != TINY and local.is_dir() else None)


def copy_record() -> dict:
    """The ``generator`` provenance of a copied image: none rendered it."""
    return {"id": "none (mode copy)", "weights_sha256": "", "dtype": "uint8", "image_size": None,
            "family": "copy", "compile": None, "channels_last": False}


def _load_with_record(cfg: GeneratorConfig, device: str) -> tuple[object, dict]:
    generator = load_generator(cfg, device)
    # The id is portable (a folder's name, a hub id): provenance travels with the data set.
    record = {"id": portable_path(getattr(generator, "name", None) or cfg.path), "weights_sha256": generator.weights_hash(),
              "dtype": str(generator.dtype).removeprefix("torch."), "image_size": generator.image_size,
              "family": generator.family, "compile": generator.compiled, "channels_last": generator.channels_last}
    return generator, record


# -- the worker ------------------------------------------------------------------------------


class ShardWriter:
    """Renders planned shards and writes each one atomically (Ray ``map_batches`` callable class).

    Args:
        spec: what to render and where.
        images: the guide data set when it is already loaded in this process (local executor);
            workers load it from ``spec.dataset`` and check its fingerprint.

    Input column ``shard`` (shard numbers of ``spec.plan``); output columns ``shard``,
    ``filename``, ``num_samples``, ``sha256``, ``size_bytes``, ``height``, ``width``,
    ``generator_sha256``, ``seconds``.
    """

    def __init__(self, spec: RenderSpec, images: LabeledImages | None = None):
        self.spec = spec
        # 1. Guide images, checked against the data set the plan was made from. What a worker
        #    loads stays resident in its process (see `resident`), so a worker that lives across
        #    rounds loads the generator and hashes its weights once.
        self.images = images if images is not None else resident(
            "images", spec.dataset, lambda: load_source(spec.dataset))
        if self.images.fingerprint != spec.dataset_fingerprint:
            raise ValueError(f"worker: data set {spec.dataset.path!r} has fingerprint {self.images.fingerprint[:12]}, "
                             f"the plan was made for {spec.dataset_fingerprint[:12]} (is it the same on every node?)")
        # 2. Generator and, only when some image gets the adversarial term, the classifier; a copy
        #    build renders nothing and loads neither.
        self.copy = spec.copies
        if self.copy:
            self.generator_record = copy_record()
            self.renderer = None
            self.start_bank = None
            _logger.info("worker ready: copying guide images (mode copy), no generator")
            return
        generator, self.generator_record = resident("generator", generator_key(spec.generator, spec.device),
                                                    lambda: _load_with_record(spec.generator, spec.device))
        from .inputs import check_steps_against      # a hub id's scheduler is known only once loaded

        check_steps_against(spec.guidance.num_steps, generator.num_train_timesteps, self.generator_record["id"])
        classifier = (resident("classifier", (spec.checkpoint, spec.checkpoint_sha256, spec.device),
                               lambda: load_guidance_classifier(spec.checkpoint, spec.device))
                      if spec.needs_classifier else None)
        expected = spec.expected_generator_sha256
        if expected is not None and expected != self.generator_record["weights_sha256"]:
            raise ValueError(f"generator {spec.generator.path!r} hashes to {self.generator_record['weights_sha256'][:12]}, "
                             f"but the shards already in {spec.output_dir} were rendered by {expected[:12]}; "
                             "pass output.overwrite=true to start over")
        # 3. The batch transform; its memory bank lives as long as this worker (bank_scope=worker);
        #    with bank_scope=run every shard starts from the earlier rounds' banks.
        self.renderer = GuidedRenderer(lambda: generator, spec.class_names, spec.guidance,
                                       classifier_factory=(lambda: classifier) if classifier is not None else None,
                                       prompt_template=spec.generator.prompt_template,
                                       prompt_names=spec.prompt_names)
        self.start_bank = (incremental_start(spec.bank_files, spec.guidance.bank_capacity,
                                             spec.guidance.bank_total_capacity) if spec.bank_scope == "run" else None)
        if self.start_bank is not None and len(self.start_bank) and \
                tuple(self.start_bank.latents.shape[1:]) != tuple(generator.latent_shape):
            raise ValueError(f"memory bank {', '.join(spec.bank_files)}: latents are "
                             f"{list(self.start_bank.latents.shape[1:])}, this generator's are "
                             f"{list(generator.latent_shape)} (banks of another generator; bank_sources or "
                             "bank_scope: shard)")
        _logger.info("worker ready: %s on %s (%s), weights %s, classifier %s", self.generator_record["id"],
                     spec.device, self.generator_record["dtype"], self.generator_record["weights_sha256"][:12],
                     "loaded" if classifier is not None else "not needed")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [self.write(int(n)) for n in batch["shard"]]
        return {k: np.asarray([r[k] for r in rows]) for k in rows[0]}

    def write(self, number: int) -> dict:
        """Render shard ``number`` of the plan and write it; return its record."""
        spec = self.spec
        shard = spec.plan.shards[number]
        start = time.perf_counter()
        if not self.copy:
            if spec.bank_scope in ("shard", "run"):
                self.renderer.reset_bank()
            if self.start_bank is not None and len(self.start_bank):
                self.renderer.bank.add(self.start_bank.labels.tolist(), torch.from_numpy(self.start_bank.latents))
            self.renderer.bank.start_recording()
        sizes: list[tuple[int, int]] = []

        def samples() -> Iterator[SyntheticSample]:
            for first in range(0, len(shard.samples), spec.batch_size):
                chunk = shard.samples[first:first + spec.batch_size]
                for sample in (self._copy(chunk) if self.copy else self._render(chunk)):
                    sizes.append((sample.image.height, sample.image.width))
                    yield sample
            # The shard's bank additions, before the shard itself is renamed into place: a kept
            # shard always has its part (the round's bank is merged from the parts).
            labels, latents = self.renderer.bank.recorded() if not self.copy else ([], None)
            entries = EMPTY if latents is None else BankEntries(np.asarray(labels, np.int64), latents.numpy())
            with writing(part_path(spec.output_dir, shard.filename)):
                save_entries(part_path(spec.output_dir, shard.filename), entries, spec.round)

        try:
            with writing(Path(spec.output_dir) / shard.filename):   # a full disk names the shard
                info = write_shard(spec.output_dir, shard.filename, samples(), image_format=spec.image_format)
        except BaseException:
            # write_shard removes its temporary, unless closing it fails too (a full disk): then here.
            for partial in Path(spec.output_dir).glob(f".{shard.filename}.partial-{os.getpid()}-*"):
                partial.unlink(missing_ok=True)
            raise
        seconds = time.perf_counter() - start
        _logger.info("wrote %s: %d images in %.1f s (%.2f images/s)", shard.filename, info.num_samples, seconds,
                     info.num_samples / seconds)
        return {"shard": number, "filename": info.filename, "num_samples": info.num_samples, "sha256": info.sha256,
                "size_bytes": info.size_bytes, "height": sizes[0][0], "width": sizes[0][1],
                "generator_sha256": self.generator_record["weights_sha256"], "seconds": seconds}

    def guide(self, source_id: str) -> np.ndarray:
        """The guide of hard sample ``source_id``: uint8 HWC, the classifier's crop or the whole image."""
        pixels = np.array(self.images.image(self.images.index_of(source_id)))
        if self.spec.guide_crop is None:
            return pixels
        input_size, crop_pct = self.spec.guide_crop
        return np.ascontiguousarray(classifier_crop(pixels, input_size, crop_pct))

    def _copy(self, chunk: Sequence[PlannedSample]) -> list[SyntheticSample]:
        """``mode: copy``: each planned image is its guide image (as the guide is prepared for a
        render), resized for storage, with provenance that says so."""
        from PIL import Image

        result = []
        for s in chunk:
            pixels = self.guide(s.source_id)
            image = resize_image(Image.fromarray(pixels, "RGB"), self.spec.resize_to, self.spec.resample)
            result.append(SyntheticSample(key=s.key, image=image, label=s.label, provenance=provenance(
                s, "", self.generator_record, self.spec, max(pixels.shape[:2]), (image.height, image.width))))
        return result

    def _render(self, chunk: Sequence[PlannedSample]) -> list[SyntheticSample]:
        from PIL import Image

        spec = self.spec
        # 1. The batch transform's columns; guides only when some image is image-guided.
        batch = {"label": np.array([s.label for s in chunk]), "seed": np.array([s.seed for s in chunk]),
                 "mode": np.array([s.mode for s in chunk]), "adversarial": np.array([s.adversarial for s in chunk])}
        if any(s.mode != "txt2img" for s in chunk):
            # A row without a guide (a text-to-image fill or random image beside guided rows)
            # gets a blank one: the sampler reads no guide of a txt2img row.
            blank = np.zeros((1, 1, 3), np.uint8)
            batch["guide"] = [self.guide(s.source_id) if s.source_id else blank for s in chunk]
        # 2. Render (uint8 NHWC at the generator's size).
        out = self.renderer(batch)
        # 3. Samples: resized for storage, with full provenance.
        rendered = self.generator_record["image_size"]
        result = []
        for s, pixels, prompt in zip(chunk, out["image"], out["prompt"]):
            image = resize_image(Image.fromarray(pixels, "RGB"), spec.resize_to, spec.resample)
            result.append(SyntheticSample(
                key=s.key, image=image, label=s.label,
                provenance=provenance(s, str(prompt), self.generator_record, spec, rendered,
                                      (image.height, image.width))))
        return result
