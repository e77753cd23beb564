"""The comparison's data: a stratified, seeded three-way split of one labeled source, and the
generator each split renders with.

- a **generator pool**, which only the generator sees (a generator fitted on it knows nothing
  of the classifier's images or the test set),
- a **labeled set** for the classifier (its hold-out, for hard samples, is inside it),
- a **test set**, for reporting.

A split is a pure function of (source, pool share, labeled per class, split seed): the same
arguments give the same three parquet files with the same fingerprints, on any machine, so a
generator fitted on one machine's pool is accepted on another's.
"""
from __future__ import annotations

import json
import logging
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

_logger = logging.getLogger(__name__)

SPLIT_FILE = "split.json"
PARTS = ("pool", "labeled", "test")


def make_split(source: str, data_split: str, pool_fraction: float, labeled_per_class: int, split_seed: int,
               data_dir: Path) -> dict:
    """Write ``pool.parquet``, ``labeled.parquet`` and ``test.parquet`` into ``data_dir``
    (stratified, seeded, disjoint) and ``split.json`` beside them; return that record.

    A ``data_dir`` that already holds a split made with these settings is reused; one made with
    other settings is an error (it would mix two studies' data).
    """
    import numpy as np
    from datasets import ClassLabel, Dataset, Features, Image

    from actgen.shards.sources import DataSource, load_source

    data_dir = Path(data_dir)
    meta_path = data_dir / SPLIT_FILE
    wanted = {"data": source, "split": data_split, "pool_fraction": pool_fraction,
              "labeled_per_class": labeled_per_class, "split_seed": split_seed}
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("settings") != wanted:
            raise ValueError(f"{meta_path}: made with {meta.get('settings')}, asked for {wanted}; use another folder")
        return meta
    images = load_source(DataSource(path=source, split=data_split))
    labels = np.array([images.label(i) for i in range(len(images))])
    rng = np.random.default_rng(split_seed)
    parts: dict[str, list[int]] = {p: [] for p in PARTS}
    for c in range(len(images.class_names)):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_pool = int(round(pool_fraction * len(rows)))
        if n_pool + labeled_per_class >= len(rows):
            raise ValueError(f"{source}: class {images.class_names[c]!r} has {len(rows)} images, not enough for "
                             f"a pool of {n_pool}, {labeled_per_class} labeled and a test set")
        parts["pool"] += rows[:n_pool].tolist()
        parts["labeled"] += rows[n_pool:n_pool + labeled_per_class].tolist()
        parts["test"] += rows[n_pool + labeled_per_class:].tolist()
    data_dir.mkdir(parents=True, exist_ok=True)
    features = Features({"image": Image(), "label": ClassLabel(names=list(images.class_names))})
    for name, rows in parts.items():
        rows = sorted(rows)
        if not rows:      # pool_fraction 0: no generator pool (a generator given by path)
            continue
        ds = Dataset.from_dict({"image": [images.image(i) for i in rows], "label": [int(labels[i]) for i in rows]},
                               features=features)
        ds.to_parquet(str(data_dir / f"{name}.parquet"))
    meta = {"settings": wanted, "class_names": list(images.class_names),
            "sizes": {k: len(v) for k, v in parts.items()}, "source_fingerprint": images.fingerprint}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    _logger.info("split %s (seed %d): %s", source, split_seed, ", ".join(f"{k} {v}" for k, v in meta["sizes"].items()))
    return meta


def generator_sha256(path: Path) -> str:
    """The generator's weights sha256, from its fit record (what the plan pins)."""
    from actgen.shards.fit_record import read_fit_record

    return read_fit_record(Path(path)).weights_sha256


def ensure_generator(generator: Path, pool: Optional[Path], fit_config: Optional[str], fit_set: Sequence[str] = (),
                     pinned: Optional[str] = None, command: str = "actgen-fit-generator",
                     env: Optional[dict] = None) -> str:
    """The generator at ``generator``, fitted on ``pool`` first when it does not exist and a fit
    config is given; never written over. Return its weights' sha256.

    A fitted generator must have seen the pool and nothing else: its fit record's data
    fingerprint must be the pool's. ``pinned`` (a plan's sha256) must match its weights.
    """
    from actgen.shards.fit_record import FIT_RECORD_FILE, read_fit_record
    from actgen.shards.sources import DataSource, load_source

    generator = Path(generator)
    if not (generator / FIT_RECORD_FILE).is_file():
        if generator.exists():
            raise ValueError(f"{generator}: exists but holds no fitted generator ({FIT_RECORD_FILE}); not written over")
        if fit_config is None or pool is None:
            raise ValueError(f"{generator}: no generator there, and the plan gives no generator.fit_config to fit one")
        argv = [_script(command), "--config", str(fit_config), "--output", str(generator),
                "--set", f"data.path={pool}"]
        for s in fit_set:
            argv += ["--set", s]
        _logger.info("fitting %s on %s", generator, pool)
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, env=env)
        _logger.info("fitted %s in %.0f s", generator, time.perf_counter() - t0)
    record = read_fit_record(generator)
    if pool is not None and fit_config is not None:
        fitted = record.data.fingerprint
        expected = load_source(DataSource(path=str(pool))).fingerprint
        if fitted != expected:
            raise ValueError(f"{generator}: fitted on data {fitted[:12]}, this split's pool is {expected[:12]}")
    if pinned is not None and record.weights_sha256 != pinned:
        raise ValueError(f"{generator}: weights sha256 {record.weights_sha256[:16]}…, the plan pins "
                         f"{pinned[:16]}… (refitted? fits are not bit-reproducible across machines)")
    return record.weights_sha256


def _script(name: str) -> str:
    from actgen.trainer.inline import resolve_command

    return resolve_command(name)
