"""Labeled image data sets in: any Hugging Face ``datasets`` source, or the embedded digits.

A :class:`DataSource` says where the images are; :func:`load_source` returns a
:class:`LabeledImages` with the class names, a content fingerprint that is the same on every
machine, and a stable id per sample (``<fingerprint[:12]>-<index:08d>``) that hard-sample
manifests point back to.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .data_files import load_rows
from .errors import FormatError

_logger = logging.getLogger(__name__)

BUILTIN_DIGITS = "builtin:digits"
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

FINGERPRINT_IMAGES = 1024          # images hashed by the fingerprint (evenly spaced)
_SAMPLE_ID_RE = re.compile(r"^([0-9a-f]{12})-([0-9]{8,})$")


@dataclass(frozen=True)
class DataSource:
    """Where a labeled image data set comes from (a config section of both CLIs).

    Attributes:
        path: ``builtin:digits`` (scikit-learn's bundled 8x8 digits, no download); a local image
            folder (``imagefolder`` layout); a directory written by ``Dataset.save_to_disk``; a
            parquet/arrow/csv file or glob; either of the last two in an object store (``s3://``,
            ``gs://``); or a hub data set name (needs the network).
        split: split to read (ignored for ``save_to_disk`` directories holding one Dataset).
        image_column: column holding images (``datasets.Image`` feature).
        label_column: column holding integer labels.
        class_names: names in label order; required when the label column is not a ClassLabel,
            and must match it when it is.
    """

    path: str = BUILTIN_DIGITS
    split: str = "train"
    image_column: str = "image"
    label_column: str = "label"
    class_names: Optional[list[str]] = None


class LabeledImages:
    """A loaded data set: ``len``, ``image(i)`` (PIL RGB), ``label(i)``, ``sample_id(i)``.

    Attributes:
        dataset: the underlying ``datasets.Dataset`` (image column decoded lazily).
        class_names: names in label order.
        fingerprint: content fingerprint (hex sha256), see :func:`fingerprint`.
        source: the :class:`DataSource` it came from.
    """

    def __init__(self, dataset, class_names: list[str], fingerprint: str, source: DataSource,
                 labels: np.ndarray | None = None):
        self.dataset = dataset
        self.class_names = list(class_names)
        self.fingerprint = fingerprint
        self.source = source
        # Only the image column is read per row, and undecoded: image(i) decodes it with the one
        # decode policy of shards.samples (16-bit scaled, bombs and bad bytes named by sample id).
        self._images = _undecoded(dataset.select_columns([source.image_column]), source.image_column)
        self._image_feature = dataset.features[source.image_column]  # (``features`` deep-copies)
        self._labels = labels if labels is not None else _read_labels(dataset, source.label_column)

    def __len__(self) -> int:
        return len(self.dataset)

    def __repr__(self) -> str:
        return (f"LabeledImages(path={self.source.path!r}, split={self.source.split!r}, "
                f"rows={len(self)}, classes={len(self.class_names)}, fingerprint={self.fingerprint[:12]})")

    def _check_index(self, index: int) -> int:
        n = len(self)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < n:
            raise IndexError(f"sample index {index!r} out of range for {n} samples")
        return int(index)

    def image(self, index: int):
        """-> PIL.Image.Image in RGB (``shards.samples.to_rgb``: 16-bit images are scaled, not clipped).

        Raises:
            FormatError: naming the data set (or the image file), the sample id and the row, when
                the image is missing (null), unreadable, too large or does not decode.
        """
        index = self._check_index(index)
        value = self._images[index][self.source.image_column]
        return decode_value(value, self._image_feature, self.source.path,
                            f"sample {self.sample_id(index)} (row {index}, column {self.source.image_column!r})")

    def check_images(self, limit: int) -> int:
        """Decode every image when there are at most ``limit`` (0: never); -> how many were decoded.

        Raises:
            FormatError: the first image that does not decode (by sample id and row), with the
                number of other rows that fail too.
        """
        n = len(self)
        if limit <= 0 or n > limit:
            return 0
        feature = self._image_feature
        first, failed = None, 0
        for start in range(0, n, _SCAN_BATCH):
            table = self._images.with_format("arrow")[start:min(start + _SCAN_BATCH, n)]
            for offset, value in enumerate(table.column(self.source.image_column).to_pylist()):
                index = start + offset
                try:
                    decode_value(value, feature, self.source.path,
                                 f"sample {self.sample_id(index)} (row {index}, column {self.source.image_column!r})")
                except FormatError as e:
                    first, failed = first or e, failed + 1
        if first is not None:
            more = f" ({failed - 1} more of {n} images fail too)" if failed > 1 else ""
            raise FormatError(first.where, f"{first.problem}{more}")
        return n

    def label(self, index: int) -> int:
        return int(self._labels[self._check_index(index)])

    def labels(self) -> np.ndarray:
        """All labels as int64 (read from the label column, no image decoding)."""
        return self._labels.copy()

    def sample_id(self, index: int) -> str:
        return sample_id(self.fingerprint, self._check_index(index))

    def index_of(self, sample_id: str) -> int:
        """Row index of ``sample_id``; FormatError if the id belongs to another data set."""
        fp12, index = parse_sample_id(sample_id)
        if fp12 != self.fingerprint[:12]:
            raise FormatError(sample_id, f"sample id belongs to data set {fp12}, not to "
                                         f"{self.source.path!r} ({self.fingerprint[:12]})")
        if index >= len(self):
            raise FormatError(sample_id, f"index {index} out of range for {len(self)} samples")
        return index


# --------------------------------------------------------------------------------------------
# Loading


def load_source(source: DataSource) -> LabeledImages:
    """Load a data set; raise ``FormatError`` naming the path and the missing column or names."""
    # 1. Read the rows (lazily; images stay encoded).
    dataset = load_rows(source)
    # 2. Both configured columns must exist.
    for role, column in (("image_column", source.image_column), ("label_column", source.label_column)):
        if column not in dataset.column_names:
            raise FormatError(source.path, f"{role} {column!r} not found; columns present: "
                                           f"{dataset.column_names}")
    dataset = _ensure_image_feature(dataset, source)
    # 3. Class names: from the ClassLabel feature, the config, or both when they agree.
    class_names = _resolve_class_names(dataset, source)
    # 4. Labels must be valid indices into the class names (checked, never clipped).
    labels = _read_labels(dataset, source.label_column, source.path)
    bad = np.flatnonzero((labels < 0) | (labels >= len(class_names)))
    if bad.size:
        i = int(bad[0])
        raise FormatError(source.path, f"column {source.label_column!r}: row {i} has label {int(labels[i])}, "
                                       f"outside 0..{len(class_names) - 1} ({len(class_names)} class names)"
                                       f"{f' and {bad.size - 1} more rows' if bad.size > 1 else ''}")
    fp = fingerprint(dataset, source.image_column, source.label_column)
    _logger.info("loaded %s split %s: %d rows, %d classes, fingerprint %s",
                 source.path, source.split, len(dataset), len(class_names), fp[:12])
    return LabeledImages(dataset, class_names, fp, source, labels=labels)


def _ensure_image_feature(dataset, source: DataSource):
    import datasets

    feature = dataset.features[source.image_column]
    if isinstance(feature, datasets.Image):
        return dataset
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        # CSV/JSON sources hold image file paths; the Image feature opens them.
        return dataset.cast_column(source.image_column, datasets.Image())
    raise FormatError(source.path, f"column {source.image_column!r} must hold images (datasets.Image) or "
                                   f"image file paths, got feature {feature}")


def _resolve_class_names(dataset, source: DataSource) -> list[str]:
    import datasets

    feature = dataset.features[source.label_column]
    configured = list(source.class_names) if source.class_names is not None else None
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
        if configured is not None and configured != names:
            raise FormatError(source.path, f"class_names from the config {configured} differ from the "
                                           f"ClassLabel names of column {source.label_column!r} {names}")
        return names
    if not (isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))):
        raise FormatError(source.path, f"column {source.label_column!r} must hold integer labels, "
                                       f"got feature {feature}")
    if configured is None:
        raise FormatError(source.path, f"column {source.label_column!r} is not a ClassLabel, so the config "
                                       "must give class_names")
    if not configured or len(set(configured)) != len(configured):
        raise FormatError(source.path, f"class_names must be non-empty and unique, got {configured}")
    return configured


def _read_labels(dataset, label_column: str, where: str = "") -> np.ndarray:
    # Arrow formatting reads only the label column (honouring any indices mapping) without
    # touching the image column.
    table = dataset.select_columns([label_column]).with_format("arrow")[:]
    column = table.column(label_column)
    if column.null_count:
        raise FormatError(where or label_column, f"label column {label_column!r} has {column.null_count} missing values")
    return column.to_numpy().astype(np.int64, copy=False)


_SCAN_BATCH = 1024


def _undecoded(dataset, image_column: str):
    """``dataset`` with the image column left encoded (``{"bytes", "path"}`` per row)."""
    import datasets

    feature = dataset.features[image_column]
    if isinstance(feature, datasets.Image) and feature.decode:
        return dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset


def decode_value(value, feature, where: str, what: str):
    """One stored image value (``{"bytes", "path"}``, or null) -> PIL RGB image.

    Raises:
        FormatError: ``where`` (or the image's own file), ``what`` and the problem.
    """
    from .samples import decode_image_bytes, to_rgb

    if value is None or (isinstance(value, dict) and value.get("bytes") is None and not value.get("path")):
        raise FormatError(where, f"{what}: the image is missing (null)")
    data = value.get("bytes") if isinstance(value, dict) else None
    if data is None:
        path = value.get("path") if isinstance(value, dict) else value
        if os.path.isfile(path):
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise FormatError(path, f"{what}: cannot read the image ({e.strerror or e})") from None
            where = path  # the file to fix
        else:
            # Remote or archived files: let datasets open them, then apply the same pixel policy.
            try:
                image = feature.decode_example({"bytes": None, "path": path})
            except Exception as e:  # any failure to open a remote file is this sample's problem
                raise FormatError(where, f"{what}: cannot open image {path!r} ({type(e).__name__}: {e})") from None
            return to_rgb(image, where, what)
    return decode_image_bytes(data, where, what)


# --------------------------------------------------------------------------------------------
# Built-in digits


def digits_dataset():
    """scikit-learn's 1,797 8x8 digit scans as a ``datasets.Dataset`` (``image``: grayscale PNG,
    ``label``: ClassLabel with :data:`DIGIT_NAMES`), built in memory without a download."""
    import datasets
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 0..16 intensities -> 0..255.
    pixels = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # (N, 8, 8)
    encoded = []
    for array in pixels:
        buf = io.BytesIO()
        # compress_level=0: a stored deflate block, so the bytes (and the fingerprint) do not
        # depend on which zlib Pillow was built with.
        Image.fromarray(array, mode="L").save(buf, format="PNG", compress_level=0)
        encoded.append({"bytes": buf.getvalue(), "path": None})
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=list(DIGIT_NAMES))})
    return datasets.Dataset.from_dict({"image": encoded, "label": digits.target.astype(np.int64)},
                                      features=features)


# --------------------------------------------------------------------------------------------
# Fingerprint and sample ids


def _image_bytes(value, feature) -> bytes:
    """The encoded bytes behind one stored image value (struct of bytes/path)."""
    data = value.get("bytes") if isinstance(value, dict) else None
    if data is not None:
        return data
    path = value.get("path") if isinstance(value, dict) else value
    if not path:
        return b""  # a null image: hashed as empty (it fails when decoded, naming its row)
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return f.read()
    # Remote or archived files: hash the decoded pixels instead (still independent of the path).
    image = feature.decode_example(value)
    return f"{image.mode}{image.size}".encode() + image.tobytes()


def _feature_signature(feature) -> object:
    """What of a feature the fingerprint covers: its kind and class names, not the attributes a
    ``datasets`` release may add (so the fingerprint survives library upgrades)."""
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return {"ClassLabel": list(feature.names)}
    if isinstance(feature, datasets.Value):
        return {"Value": feature.dtype}
    return type(feature).__name__


def fingerprint(dataset, image_column: str, label_column: str) -> str:
    """Content fingerprint: sha256 over features, row count, every label and the encoded bytes of
    up to 1,024 evenly spaced images. Independent of paths, mtimes and machines."""
    h = hashlib.sha256()
    features = {"image": _feature_signature(dataset.features[image_column]),
                "label": _feature_signature(dataset.features[label_column])}
    h.update(json.dumps(features, sort_keys=True).encode())
    n = len(dataset)
    h.update(f"rows={n};".encode())
    h.update(_read_labels(dataset, label_column).astype("<i8").tobytes())
    if n:
        indices = np.unique(np.linspace(0, n - 1, num=min(n, FINGERPRINT_IMAGES)).round().astype(np.int64))
        table = dataset.select_columns([image_column]).with_format("arrow")[indices.tolist()]
        feature = dataset.features[image_column]
        for value in table.column(image_column).to_pylist():
            data = _image_bytes(value, feature)
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return h.hexdigest()


def sample_id(fingerprint: str, index: int) -> str:
    """``<fingerprint[:12]>-<index:08d>``."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"sample index must be a non-negative int, got {index!r}")
    if len(fingerprint) < 12:
        raise ValueError(f"fingerprint must have at least 12 hex digits, got {fingerprint!r}")
    return f"{fingerprint[:12]}-{int(index):08d}"


def parse_sample_id(sample_id: str) -> tuple[str, int]:
    """``'<fp12>-<index>'`` -> ``(fp12, index)``; FormatError on anything else."""
    m = _SAMPLE_ID_RE.match(sample_id) if isinstance(sample_id, str) else None
    if m is None:
        raise FormatError(repr(sample_id), "not a sample id; expected '<12 hex digits>-<index, 8+ digits>'")
    return m.group(1), int(m.group(2))
