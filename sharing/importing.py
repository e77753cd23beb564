"""``actgen-data import``: a data set converted once into Arrow shards (``save_to_disk``).

An image folder is listed and indexed again by every process that opens it (about 0.9 ms a file:
20 minutes at ImageNet's 1.28M, on every trainer rank and in the builder), while a
``save_to_disk`` folder opens in about a second at any size. The import keeps the image and label
columns exactly as they are (encoded image bytes, label feature), so the result has the same
content fingerprint: hard-sample ids and manifests written against the source stay valid.

Written into a hidden sibling and swapped into place only when complete and re-opened with the
source's fingerprint, so an interrupted import leaves nothing that looks finished.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from actgen.shards.errors import FormatError
from actgen.shards.sources import DataSource, load_source

from .outputs import check_output, replacing

_logger = logging.getLogger("actgen.data")


def import_source(source: DataSource, dest: str | Path, overwrite: bool = False, max_shard_size: str = "500MB",
                  num_proc: Optional[int] = None) -> dict:
    """Convert ``source`` (anything the trainer reads) into a ``save_to_disk`` folder at ``dest``.

    Returns ``{"rows", "classes", "class_names", "fingerprint", "shards", "path"}``.

    Raises:
        ValueError: ``dest`` is, lies inside or contains the source, is a link, or holds files that
            are not an earlier import.
        FileExistsError: an import is already at ``dest`` and ``overwrite`` is false.
        FormatError: the source cannot be read, or the written copy does not re-open with the same
            fingerprint (then nothing is left at ``dest``).
    """
    from actgen.shards.transfer import is_url

    if is_url(str(dest)):
        raise ValueError(f"output {dest} is a URL; import writes a local (or mounted shared) folder")
    sources = [] if source.path.startswith("builtin:") or is_url(source.path) else [source.path]
    # An earlier import is what --overwrite may replace; anything else in dest is a user's folder.
    out = check_output(dest, sources, overwrite, "imported data set")
    images = load_source(source)
    # Only the two columns the fingerprint covers, unchanged: the same fingerprint, no stray data.
    dataset = images.dataset.select_columns([source.image_column, source.label_column])
    with replacing(out) as staging:
        dataset.save_to_disk(str(staging), max_shard_size=max_shard_size, num_proc=num_proc)
        again = load_source(DataSource(path=str(staging), split=source.split, image_column=source.image_column,
                                       label_column=source.label_column, class_names=source.class_names))
        if again.fingerprint != images.fingerprint or len(again) != len(images):
            raise FormatError(str(dest), f"the written copy re-opens with fingerprint {again.fingerprint[:12]} "
                                         f"({len(again)} rows), not the source's {images.fingerprint[:12]} "
                                         f"({len(images)} rows); nothing was kept")
        shards = len(list(staging.glob("data-*.arrow")))
    _logger.info("imported %s into %s: %d rows, %d classes, %d shards, fingerprint %s", source.path, out,
                 len(images), len(images.class_names), shards, images.fingerprint[:12])
    return {"rows": len(images), "classes": len(images.class_names), "class_names": images.class_names,
            "fingerprint": images.fingerprint, "shards": shards, "path": str(out)}
