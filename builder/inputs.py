"""Check every input of a build before anything is written (method: validate at the boundary).

:func:`resolve_inputs` reads the manifest, the data set it points into, the checkpoint bundle,
the generator location and the output location, and raises one error naming the file, the
field and both sides of a disagreement: a data set whose fingerprint is not the manifest's, a
checkpoint with other class names, a generator directory without a component, an output that
cannot be written. It creates nothing (a writability probe is removed at once).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from actgen.shards.bundle import CONFIG_FILE, BundleConfig, bundle_sha256, load_classifier
from actgen.shards.errors import FormatError
from actgen.shards.manifest import HardSampleManifest, read_manifest
from actgen.shards.sources import BUILTIN_DIGITS, DataSource, LabeledImages, load_source, parse_sample_id
from actgen.shards.writer import file_sha256

from .config import TINY, BuildConfig, GeneratorConfig, check_components

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildInputs:
    """The checked inputs of one build.

    Attributes:
        manifest: the hard-sample manifest.
        manifest_sha256: sha256 of the manifest file.
        images: the data set the manifest's ids point into (guide images).
        bundle: the checkpoint's config.
        checkpoint_sha256: sha256 of the checkpoint's ``model.safetensors``.
        class_names: names in label order (the same in manifest, data set and checkpoint).
        round: the round being built.
        output: the data-set directory.
        stored_size: ``(H, W)`` of stored images when fixed by the config, None for the rendered size.
        prompt_names: each class's prompt name in label order (``generator.prompt_names``), or None.
        guide_pool: ``(sample id, label)`` of the manifest's ``header.guide_pool`` (training images
            a class-balanced allocation may guide by), labels read from the data set.
    """

    manifest: HardSampleManifest
    manifest_sha256: str
    images: LabeledImages
    bundle: BundleConfig
    checkpoint_sha256: str
    class_names: list[str]
    round: int
    output: Path
    stored_size: Optional[tuple[int, int]]
    prompt_names: Optional[list[str]] = None
    guide_pool: tuple[tuple[str, int], ...] = ()


def resolve_inputs(cfg: BuildConfig) -> BuildInputs:
    """Check every input; raise FormatError/ValueError/FileNotFoundError naming what is wrong."""
    # 1. The manifest, and the data set it points into.
    manifest_path = Path(cfg.manifest)
    manifest = read_manifest(manifest_path)
    header = manifest.header
    if not manifest.samples and cfg.targets == "hard" and not round_not_fired(manifest):
        raise FormatError(str(manifest_path), "lists no hard samples (the classifier got every hold-out "
                                              "sample right); there is nothing to render near (targets: "
                                              "uniform renders classes drawn uniformly instead)")
    images = load_dataset(cfg.dataset, manifest, manifest_path, cfg.data_roots)
    # 2. The checkpoint: same class names as the manifest, and the one that made the manifest.
    bundle_dir = Path(cfg.checkpoint)
    if not bundle_dir.is_dir():
        raise FileNotFoundError(f"{bundle_dir}: checkpoint bundle directory not found (config key 'checkpoint')")
    _model, bundle = load_classifier(bundle_dir, device="cpu")   # also proves the weights load
    del _model
    where = str(bundle_dir / CONFIG_FILE)
    if list(bundle.class_names) != list(header.class_names):
        raise FormatError(where, f"class names differ: checkpoint has {list(bundle.class_names)}, manifest "
                                 f"{manifest_path} has {list(header.class_names)}")
    if bundle.input_size[0] != 3:
        raise FormatError(where, f"field 'input_size' is {list(bundle.input_size)}: the builder feeds the "
                                 "classifier RGB images, so it needs 3 input channels")
    checkpoint_sha256 = bundle_sha256(bundle_dir)
    if cfg.check_checkpoint and checkpoint_sha256 != header.checkpoint_sha256:
        raise FormatError(str(bundle_dir), f"model.safetensors has sha256 {checkpoint_sha256[:12]}, but manifest "
                                           f"{manifest_path} was made by checkpoint {header.checkpoint_sha256[:12]} "
                                           "(header.checkpoint_sha256); pass check_checkpoint=false to guide "
                                           "with another classifier on purpose")
    # 3. The generator location (none is loaded to copy), its steps, and the classes' prompt names.
    if cfg.mode != "copy":
        check_generator(cfg.generator)
        check_steps(cfg)
    prompt_names = None
    if cfg.generator.prompt_names is not None:
        from .prompts import load_prompt_names

        prompt_names = load_prompt_names(cfg.generator.prompt_names, header.class_names)
    # 4. The output location: creatable and writable (probed, nothing left behind).
    # Absolute, because workers on other nodes run elsewhere (they need the same shared path).
    output = Path(cfg.output.path).expanduser().absolute()
    check_writable(output)
    stored = None
    if cfg.output.resize == "classifier":
        stored = (int(bundle.input_size[1]), int(bundle.input_size[2]))
    elif cfg.output.resize == "fixed":
        stored = (cfg.output.size, cfg.output.size)
    round = cfg.round if cfg.round is not None else header.round
    guide_pool = tuple((sid, int(images.label(images.index_of(sid)))) for sid in header.guide_pool)
    return BuildInputs(manifest=manifest, manifest_sha256=file_sha256(manifest_path), images=images, bundle=bundle,
                       checkpoint_sha256=checkpoint_sha256, class_names=list(header.class_names), round=round,
                       output=output, stored_size=stored, prompt_names=prompt_names, guide_pool=guide_pool)


def round_not_fired(manifest: HardSampleManifest) -> bool:
    """Whether the trainer's round did not fire (its start condition did not hold yet): no
    samples, and ``header.selection.fired`` false. The build then renders uniform targets."""
    return not manifest.samples and manifest.header.selection.get("fired") is False


def load_dataset(source: Optional[DataSource], manifest: HardSampleManifest, manifest_path: Path,
                 data_roots: Sequence[str] = ()) -> LabeledImages:
    """The configured data set, or the manifest header's where ``data_roots`` admit it; its
    fingerprint and names must match the manifest's, and every hard sample's row must exist."""
    header = manifest.header
    if source is None:
        source = manifest_source(manifest, manifest_path, data_roots)
    local = Path(source.path).expanduser()
    glob = any(c in source.path for c in "*?[")
    if not source.path.startswith("builtin:") and (local.exists() or (glob and local.parent.is_dir())):
        # Absolute, so that workers elsewhere open the same files (globs included).
        source = dataclasses.replace(source, path=str(local.absolute()))
    images = open_source(source)
    if images.fingerprint != header.dataset_fingerprint:
        raise FormatError(str(manifest_path),
                          f"data-set fingerprint {header.dataset_fingerprint[:12]} (header.dataset_fingerprint) does "
                          f"not match the data set given ({source.path!r} split {source.split!r}: "
                          f"{images.fingerprint[:12]}); the hard-sample ids point into another data set")
    if images.class_names != list(header.class_names):
        raise FormatError(str(manifest_path), f"class names differ: manifest has {list(header.class_names)}, "
                                              f"data set {source.path!r} has {images.class_names}")
    ids = [(f"samples[{i}].id", s.id) for i, s in enumerate(manifest.samples)]
    ids += [(f"header.guide_pool[{i}]", sid) for i, sid in enumerate(header.guide_pool)]
    for field_name, sid in ids:
        _, row = parse_sample_id(sid)
        if row >= len(images):
            raise FormatError(str(manifest_path), f"field '{field_name}' {sid!r}: row {row} is out of range "
                                                  f"for data set {source.path!r}, which has {len(images)} rows")
    return images


def open_source(source: DataSource) -> LabeledImages:
    """:func:`load_source`, kept open across rounds in this process (a builder that stays up,
    ``--serve`` or ``--watch``, opens its data set once: opening lists, indexes and fingerprints
    it, minutes for a large image folder). A local source is opened again when its path now names
    another file or folder, or one modified since."""
    from actgen.shards.writer import file_stamp

    from .resident import resident

    try:
        stamp = file_stamp(Path(source.path).expanduser())
    except (OSError, ValueError):
        stamp = None
    return resident("dataset", (source, stamp), lambda: load_source(source))


def manifest_source(manifest: HardSampleManifest, manifest_path: Path, data_roots: Sequence[str]) -> DataSource:
    """The manifest's ``header.dataset``, where the build's config lets a manifest choose it.

    A manifest comes from another program, maybe another machine or person; a path in it must not
    decide what the builder reads (a manifest naming ``/`` would make it walk the whole disk). It
    may name the embedded ``builtin:digits`` (no file is read), or a path that resolves, symbolic
    links followed, inside one of ``data_roots``; anything else (a hub name too: a download) only
    when config key ``dataset`` names it.
    """
    where = str(manifest_path)
    try:
        source = DataSource(**manifest.header.dataset)
    except TypeError as e:
        raise FormatError(where, f"field 'header.dataset' is not a data source ({e}); "
                                 "give config key 'dataset' instead") from None
    path = source.path
    if not isinstance(path, str) or not path:
        raise FormatError(where, f"field 'header.dataset.path' = {path!r}: expected a data-set path")
    if path == BUILTIN_DIGITS:
        return source
    fix = (f"set config key 'dataset' to read it (e.g. --set dataset.path={path}), or list a folder holding it "
           "in config key 'data_roots'")
    if not data_roots:
        raise FormatError(where, f"field 'header.dataset.path' = {path!r}: the builder reads only data its config "
                                 f"names, and config key 'dataset' is null with no 'data_roots'; {fix}")
    if path.startswith("builtin:") or not _looks_local_path(path):
        raise FormatError(where, f"field 'header.dataset.path' = {path!r}: not a local path inside 'data_roots' "
                                 f"{list(data_roots)}; {fix}")
    resolved = _fixed_prefix(Path(path).expanduser()).resolve()
    roots = [Path(r).expanduser().resolve() for r in data_roots]
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise FormatError(where, f"field 'header.dataset.path' = {path!r} (resolved: {resolved}) is not inside "
                                 f"'data_roots' {[str(r) for r in roots]}; {fix}")
    return source


def _looks_local_path(path: str) -> bool:
    """A local file, folder or glob rather than a hub name (``owner/name``)."""
    local = Path(path).expanduser()
    return (local.exists() or path.startswith(("/", ".", "~")) or any(c in path for c in "*?[")
            or path.count("/") != 1)


def _fixed_prefix(path: Path) -> Path:
    """The part of a glob before its first wildcard component (the folder it can match in)."""
    parts = []
    for part in path.parts:
        if any(c in part for c in "*?["):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def check_generator(cfg: GeneratorConfig) -> None:
    """A local directory must hold every Stable Diffusion component; a hub id must be cached when
    ``local_files_only`` (nothing is downloaded here)."""
    if cfg.path == TINY:
        if cfg.dtype in ("float16", "bfloat16"):
            raise ValueError(f"config key 'generator.dtype' = {cfg.dtype!r}: the tiny generator runs float32 only")
        return
    local = Path(cfg.path).expanduser()
    if local.is_dir():
        check_components(local)
        return
    if local.exists() or cfg.path.startswith(("/", ".", "~")) or cfg.path.count("/") != 1:
        raise FileNotFoundError(f"{cfg.path}: generator.path is neither a Stable Diffusion directory nor a "
                                "hub id ('owner/name')")
    if cfg.local_files_only:
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(cfg.path, "unet/config.json"), str):
            raise FileNotFoundError(f"{cfg.path}: hub id not in the local Hugging Face cache and "
                                    "generator.local_files_only is true")


def check_config(cfg: BuildConfig) -> None:
    """What can be checked of a build without a round: the generator (folder or cached hub id,
    its components, the steps it was trained with) and the packages the output's publish location
    needs. ValueError/FileNotFoundError naming the key."""
    from actgen.shards.runtime import require_for_location

    if cfg.mode != "copy":
        check_generator(cfg.generator)
        check_steps(cfg)
    if cfg.output.publish:
        require_for_location(cfg.output.publish, "output.publish")


def check_steps(cfg: BuildConfig) -> None:
    """``guidance.num_steps`` within the generator's training steps, read from a local folder's
    scheduler config before anything loads (workers check a hub id's when they load it)."""
    local = Path(cfg.generator.path).expanduser()
    config = local / "scheduler" / "scheduler_config.json"
    if cfg.generator.path == TINY or not config.is_file():
        return
    from actgen.shards._schema import read_json_file

    data = read_json_file(config)
    trained = data.get("num_train_timesteps") if isinstance(data, dict) else None
    if isinstance(trained, int) and not isinstance(trained, bool):
        check_steps_against(cfg.guidance.num_steps, trained, str(local))


def check_steps_against(num_steps: int, trained: int, generator: str) -> None:
    """ValueError naming ``guidance.num_steps`` when it exceeds the generator's training steps."""
    if num_steps > trained:
        raise ValueError(f"config key 'guidance.num_steps' = {num_steps}: at most the {trained} steps generator "
                         f"{generator} was trained with")


def check_writable(output: Path) -> None:
    """``output`` is a directory we can write into, or can be created; probe by making (and removing)
    a temporary directory in it or in its nearest existing ancestor."""
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"{output}: output.path exists and is not a directory")
    anchor = output
    while not anchor.exists():
        anchor = anchor.parent
    if not anchor.is_dir():
        raise NotADirectoryError(f"{output}: cannot create output.path, {anchor} is a file, not a directory")
    try:
        probe = tempfile.mkdtemp(prefix=".actgen-build-probe-", dir=anchor)
    except OSError as e:
        what = "write into output.path" if anchor == output else f"create output.path under {anchor}"
        raise PermissionError(f"{output}: cannot {what} ({e.strerror or e})") from None
    os.rmdir(probe)


def source_dict(images: LabeledImages) -> dict:
    """The data source as recorded in ``build.json``."""
    return dataclasses.asdict(images.source)
