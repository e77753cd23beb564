"""``actgen-data merge``: several data sets (say, every round of a run) into one new data set with
one index and card. Keys stay as they are (a key seen twice is an error naming both sets), each
sample keeps its provenance, and the index lists the sources (portable: no local paths)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

from actgen.shards.card import LICENSE_FIELDS, card_license
from actgen.shards.portable import portable_path
from actgen.shards.reader import ShardRandomAccess
from actgen.shards.verify import verify
from actgen.shards.writer import COPIES_KEY, INDEX_FILE, DatasetIndex, ShardSetWriter, file_sha256

from .outputs import check_output, replacing

_logger = logging.getLogger(__name__)

SAMPLES_PER_SHARD = 1000


def merge(sources: Sequence[str | Path], output: str | Path, samples_per_shard: int = SAMPLES_PER_SHARD,
          overwrite: bool = False, image_format: Optional[str] = None) -> DatasetIndex:
    """Write the samples of ``sources``, in order, as one data set in ``output``.

    Every source is verified first (checksums, counts, labels; images are decoded while copying).
    Each image keeps its stored bytes: a data set holds one image format, so sources of different
    formats need ``image_format``, and the images not in it are re-encoded (logged, with counts).

    Raises:
        FormatError: a source is not a finished data set or fails its check.
        ValueError: no source, one listed twice, class names or image sizes that differ between
            sources, or a key present in two of them (naming both); nothing is indexed then.
        FileExistsError: ``output`` holds a data set and ``overwrite`` is false.
        ValueError: ``output`` is, lies inside or contains a source, or holds other files
            (``sharing.outputs.check_output``). The output is written whole or not at all.
    """
    paths = [Path(s) for s in sources]
    if not paths:
        raise ValueError("merge: no source data sets given")
    resolved = [p.resolve() for p in paths]
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"merge: a source is listed twice in {[str(p) for p in paths]}")
    out = check_output(output, paths, overwrite, "data set")
    # 1. Every source verifies and agrees with the first on class names and image size.
    sets = []
    for path in paths:
        verify(path, decode=False)
        sets.append(ShardRandomAccess(path))
    first = sets[0]
    for path, data in zip(paths[1:], sets[1:]):
        if data.class_names != first.class_names:
            raise ValueError(f"merge: {path} has class names {data.class_names}, {paths[0]} has {first.class_names}")
        if tuple(data.index.image_size) != tuple(first.index.image_size):
            raise ValueError(f"merge: {path} holds {tuple(data.index.image_size)} (HxW) images, "
                             f"{paths[0]} holds {tuple(first.index.image_size)}")
    fmt = _output_format(paths, sets, image_format)
    seen: dict[str, Path] = {}
    for path, data in zip(paths, sets):
        for i in range(len(data)):
            key = data.key(i)
            if key in seen:
                raise ValueError(f"merge: key {key!r} is in both {seen[key]} and {path}; keys must be unique "
                                 "(the same data set twice, or sets built with the same round and seed?)")
            seen[key] = path
    # 2. The sources as the index lists them.
    listed = [source_record(p, d) for p, d in zip(paths, sets)]
    total = sum(len(d) for d in sets)
    # 3. Copy, sample by sample (the writer checks keys, labels, sizes; an error leaves no index).
    with replacing(out) as staging, ShardSetWriter(
            staging, first.class_names, total, max(1, -(-total // samples_per_shard)), prefix="merged",
            image_format=fmt, created={"merged_by": "actgen-data merge", "sources": listed,
                                       "license": merged_license([d.index.created for d in sets]),
                                       **({COPIES_KEY: True} if any(d.index.created.get(COPIES_KEY) is True
                                                                    for d in sets) else {})}) as writer:
        for data in sets:
            for i in range(len(data)):
                writer.write(data.sample(i))
        index = writer.close()
    return index


def merged_license(created: Sequence[dict]) -> dict:
    """The sources' licence record when they all agree, field by field; a field they differ on is
    unknown (None), so that the card says ``other`` rather than a licence one source lacks."""
    records = [card_license(c) for c in created]
    return {k: records[0][k] if all(r[k] == records[0][k] for r in records) else None for k in LICENSE_FIELDS}


def _output_format(paths: Sequence[Path], sets: Sequence[ShardRandomAccess], asked: Optional[str]) -> str:
    """The merged set's image format: the sources' own when they agree, else ``asked`` (re-encoding
    the others, said in the log); ValueError naming the formats when they differ and none is asked."""
    formats = {p: d.image_extension(0) for p, d in zip(paths, sets) if len(d)}
    if asked is None:
        kinds = sorted(set(formats.values()))
        if len(kinds) > 1:
            raise ValueError(f"merge: the sources hold different image formats ({', '.join(f'{p}: {f}' for p, f in formats.items())}); "
                             f"a data set holds one: pass --format {'|'.join(kinds)} to re-encode the others")
        return kinds[0] if kinds else "png"
    for path, data in zip(paths, sets):
        if formats.get(path, asked) != asked:
            _logger.warning("merge: re-encoding the %d %s images of %s as %s", len(data), formats[path], path, asked)
    return asked


def source_record(path: str | Path, data: ShardRandomAccess) -> dict:
    """How a merged or filtered data set lists one of its sources (portable: no local path)."""
    return {"path": portable_path(str(path)), "name": data.index.name, "num_samples": len(data),
            "index_sha256": file_sha256(Path(path) / INDEX_FILE), "round": data.index.created.get("round")}
