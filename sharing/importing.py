"""``actgen-data import``: a data set converted once into Arrow shards (``save_to_disk``).

An image folder is listed and indexed again by every process that opens it (about 0.9 ms a file:
20 minutes at ImageNet's 1.28M, on every trainer rank and in the builder), while a
``save_to_disk`` folder opens in about a second at any size. The import keeps the image and label
columns exactly as they are (encoded image bytes, label feature), so the result has the same
content fingerprint: hard-sample ids and manifests written against the source stay valid.

The shards are written by :func:`write_shard`, here, in local processes (``num_proc``), or on a
Ray cluster (``ray_address``): Ray Data drives :class:`ShardWriter` actors, each given whole
shards (contiguous rows, split as ``save_to_disk`` splits them), reading their rows, optionally
decoding every image, and writing the shard's Arrow file. The driver opens the source once and
writes the folder's two small JSON files; everything else is the workers'.

Written into a hidden sibling and swapped into place only when complete and re-opened with the
source's fingerprint, so an interrupted import leaves nothing that looks finished.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

from actgen.shards.errors import FormatError
from actgen.shards.sources import DataSource, LabeledImages, decode_value, load_source

from .outputs import check_output, replacing

_logger = logging.getLogger("actgen.data")

_WRITE_BATCH = 1000    # rows per Arrow record batch (datasets' own default for save_to_disk)
_DECODE_BATCH = 256


def import_source(source: DataSource, dest: str | Path, overwrite: bool = False, max_shard_size: str = "500MB",
                  num_proc: Optional[int] = None, decode: bool = False, ray_address: Optional[str] = None) -> dict:
    """Convert ``source`` (anything the trainer reads) into a ``save_to_disk`` folder at ``dest``.

    ``decode`` also decodes every image (a corrupt one fails the import naming its row);
    ``ray_address`` writes the shards on that Ray cluster (its workers must see the source's
    files, ``datasets``' cache and ``dest`` at the same paths: shared storage), else ``num_proc``
    local processes, else this one.

    Returns ``{"rows", "classes", "class_names", "fingerprint", "shards", "path"}``.

    Raises:
        ValueError: ``dest`` is, lies inside or contains the source, is a link, or holds files that
            are not an earlier import.
        FileExistsError: an import is already at ``dest`` and ``overwrite`` is false.
        FormatError: the source cannot be read, an image does not decode (with ``decode``), or the
            written copy does not re-open with the same fingerprint (then nothing is left at ``dest``).
        ConnectionError: no Ray cluster answers at ``ray_address`` (before anything is written).
    """
    from actgen.shards.cluster import joined, ray_workers
    from actgen.shards.transfer import is_url

    if is_url(str(dest)):
        raise ValueError(f"output {dest} is a URL; import writes a local (or mounted shared) folder")
    sources = [] if source.path.startswith("builtin:") or is_url(source.path) else [source.path]
    # An earlier import is what --overwrite may replace; anything else in dest is a user's folder.
    out = check_output(dest, sources, overwrite, "imported data set")
    # The cluster is joined (or refused) before the source is opened or anything is written.
    with joined(ray_address, "--ray-address", "leave --ray-address out to import in this process") as on_ray:
        images = load_source(source)
        # Only the two columns the fingerprint covers, unchanged: the same fingerprint, no stray data.
        dataset = images.dataset.select_columns([source.image_column, source.label_column])
        num_shards = _num_shards(dataset, max_shard_size, ray_workers(len(dataset)) if on_ray else num_proc)
        with replacing(out) as staging:
            if on_ray:
                results = _write_on_ray(dataset, staging, num_shards, source, decode)
            else:
                results = _write_here(dataset, staging, num_shards, source, decode, num_proc)
            _check_results(results, num_shards, len(dataset), str(dest))
            _write_state(dataset, staging, num_shards)
            _check_copy(staging, source, images, str(dest))
    _logger.info("imported %s into %s: %d rows, %d classes, %d shards, fingerprint %s", source.path, out,
                 len(images), len(images.class_names), num_shards, images.fingerprint[:12])
    return {"rows": len(images), "classes": len(images.class_names), "class_names": images.class_names,
            "fingerprint": images.fingerprint, "shards": num_shards, "path": str(out)}


# ------------------------------------------------------------------------------ one shard
def shard_name(index: int, num_shards: int) -> str:
    """The file ``save_to_disk`` gives shard ``index`` of ``num_shards``."""
    return f"data-{index:05d}-of-{num_shards:05d}.arrow"


def shard_start(index: int, num_shards: int, rows: int) -> int:
    """First row of contiguous shard ``index`` (``datasets.Dataset.shard(contiguous=True)``'s split)."""
    div, mod = divmod(rows, num_shards)
    return div * index + min(index, mod)


def write_shard(dataset, index: int, num_shards: int, folder: str | Path, image_column: str, decode: bool,
                where: str) -> dict:
    """Write shard ``index`` of ``dataset`` into ``folder`` as ``save_to_disk`` writes it (local image
    files embedded as bytes), through a ``.partial`` name; ``{"shard", "rows", "bytes"}``.

    Raises:
        FormatError: with ``decode``, the first row of the shard whose image does not decode
            (numbered in the source, ``where``); nothing is left for this shard.
    """
    from datasets.arrow_writer import ArrowWriter

    shard = dataset.shard(num_shards=num_shards, index=index, contiguous=True)
    if decode:
        _decode_all(shard, image_column, shard_start(index, num_shards, len(dataset)), where)
    path = Path(folder) / shard_name(index, num_shards)
    partial = path.with_name(path.name + ".partial")
    writer = ArrowWriter(features=shard.features, path=str(partial), embed_local_files=True)
    try:
        for table in shard.with_format("arrow").iter(_WRITE_BATCH):
            writer.write_table(table)
        rows, nbytes = writer.finalize()
    finally:
        writer.close()
    os.replace(partial, path)
    return {"shard": index, "rows": int(rows), "bytes": int(nbytes)}


def _decode_all(shard, image_column: str, first_row: int, where: str) -> None:
    import datasets

    feature = shard.features[image_column]
    encoded = shard.select_columns([image_column])
    if isinstance(feature, datasets.Image) and feature.decode:
        encoded = encoded.cast_column(image_column, datasets.Image(decode=False))
    row = first_row
    for table in encoded.with_format("arrow").iter(_DECODE_BATCH):
        for value in table.column(image_column).to_pylist():
            decode_value(value, feature, where, f"row {row}")
            row += 1


class ShardWriter:
    """A Ray Data worker (``map_batches`` over shard numbers): keeps the opened source and writes
    each shard it is given with :func:`write_shard`. A bad image comes back as the row's
    ``error`` (the driver raises it), not as a Ray task failure wrapped in Ray's traceback."""

    def __init__(self, dataset, folder: str, num_shards: int, image_column: str, decode: bool, where: str):
        self.dataset, self.folder, self.num_shards = dataset, folder, num_shards
        self.image_column, self.decode, self.where = image_column, decode, where

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done: dict[str, list] = {"shard": [], "rows": [], "bytes": [], "error_where": [], "error": []}
        for index in batch["shard"]:
            try:
                result = write_shard(self.dataset, int(index), self.num_shards, self.folder, self.image_column,
                                     self.decode, self.where)
                where, error = "", ""
            except FormatError as e:
                result, where, error = {"shard": int(index), "rows": 0, "bytes": 0}, e.where, e.problem
            for key in ("shard", "rows", "bytes"):
                done[key].append(result[key])
            done["error_where"].append(where)
            done["error"].append(error)
        return {key: np.asarray(values) for key, values in done.items()}


# ------------------------------------------------------------------------------ the three ways
def _write_here(dataset, staging: Path, num_shards: int, source: DataSource, decode: bool,
                num_proc: Optional[int]) -> list[dict]:
    from tqdm.auto import tqdm

    from actgen.shards.runtime import progress_bars

    args = [(dataset, i, num_shards, staging, source.image_column, decode, source.path) for i in range(num_shards)]
    bar = tqdm(total=num_shards, unit="shard", desc="import", disable=not progress_bars() or num_shards == 1)
    results = []
    with bar:
        if not num_proc or num_proc == 1:
            for a in args:
                results.append(write_shard(*a))
                bar.update()
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(num_proc, mp_context=mp.get_context("spawn")) as pool:
                for result in pool.map(write_shard, *zip(*args)):
                    results.append(result)
                    bar.update()
    return results


def _write_on_ray(dataset, staging: Path, num_shards: int, source: DataSource, decode: bool) -> list[dict]:
    import ray

    from actgen.shards.cluster import map_on_ray, ray_workers

    _logger.info("import on Ray: %d shards on %d workers (cluster %s)", num_shards, ray_workers(num_shards),
                 {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "memory")})
    kwargs = dict(dataset=dataset, folder=str(staging), num_shards=num_shards, image_column=source.image_column,
                  decode=decode, where=source.path)
    results = []
    for row in map_on_ray([{"shard": i} for i in range(num_shards)], ShardWriter, kwargs):
        if row["error"]:
            raise FormatError(str(row["error_where"]), str(row["error"]))
        results.append({"shard": int(row["shard"]), "rows": int(row["rows"]), "bytes": int(row["bytes"])})
        _logger.debug("shard %d/%d written (%d rows)", len(results), num_shards, results[-1]["rows"])
    return results


# ------------------------------------------------------------------------------ the folder
def _num_shards(dataset, max_shard_size: str, workers: Optional[int]) -> int:
    """As many shards as ``save_to_disk`` would write for ``max_shard_size``, and at least one per
    worker (so every worker has one), never more than rows."""
    from datasets.utils.py_utils import convert_file_size_to_int

    limit = convert_file_size_to_int(max_shard_size)
    nbytes = dataset._estimate_nbytes()    # what save_to_disk sizes its shards by (counts linked files)
    by_size = int(nbytes / limit) + 1
    return max(1, min(len(dataset), max(by_size, workers or 1)))


def _check_results(results: list[dict], num_shards: int, rows: int, where: str) -> None:
    shards = sorted(r["shard"] for r in results)
    if shards != list(range(num_shards)) or sum(r["rows"] for r in results) != rows:
        raise FormatError(where, f"the workers wrote shards {shards} with {sum(r['rows'] for r in results)} rows; "
                                 f"expected shards 0..{num_shards - 1} with {rows} rows; nothing was kept")


def _write_state(dataset, folder: Path, num_shards: int) -> None:
    """``state.json`` and ``dataset_info.json`` exactly as ``Dataset.save_to_disk`` writes them."""
    state = {key: dataset.__dict__[key] for key in ("_fingerprint", "_format_columns", "_format_kwargs",
                                                    "_format_type", "_output_all_columns")}
    state["_split"] = str(dataset.split) if dataset.split is not None else None
    state["_data_files"] = [{"filename": shard_name(i, num_shards)} for i in range(num_shards)]
    (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    from datasets.utils.py_utils import asdict    # datasets' own: features as their JSON form

    info = asdict(dataset.info)
    (folder / "dataset_info.json").write_text(json.dumps({key: info[key] for key in sorted(info)}, indent=2),
                                              encoding="utf-8")


def _check_copy(staging: Path, source: DataSource, images: LabeledImages, dest: str) -> None:
    again = load_source(DataSource(path=str(staging), split=source.split, image_column=source.image_column,
                                   label_column=source.label_column, class_names=source.class_names))
    if again.fingerprint != images.fingerprint or len(again) != len(images):
        raise FormatError(dest, f"the written copy re-opens with fingerprint {again.fingerprint[:12]} "
                                f"({len(again)} rows), not the source's {images.fingerprint[:12]} "
                                f"({len(images)} rows); nothing was kept")
