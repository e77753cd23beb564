"""One synthetic sample <-> the WebDataset members of one key. Pure functions, no I/O."""
from __future__ import annotations

import io
import json
import re
import struct
from dataclasses import dataclass, field
from typing import Optional

from ._schema import is_int
from .errors import FormatError


@dataclass(frozen=True)
class SyntheticSample:
    """A rendered image and where it came from.

    ``provenance`` holds at least: class_name, source_id (hard-sample id), generator (id and
    weights hash), prompt, seed, guidance (settings dict), checkpoint_sha256, round, tool_version.
    """

    key: str
    image: object          # PIL.Image.Image
    label: int
    provenance: dict = field(default_factory=dict)
    # The image as it was stored, ``(extension, bytes)``, when read from a shard: a writer of the
    # same image format copies these bytes instead of encoding again (no second lossy encode).
    encoded: Optional[tuple[str, bytes]] = field(default=None, compare=False, repr=False)


REQUIRED_PROVENANCE = ("class_name", "source_id", "generator", "prompt", "seed", "guidance",
                       "checkpoint_sha256", "round", "tool_version")

IMAGE_FORMATS = ("png", "jpg", "webp")
# WebDataset extension -> Pillow format name and save options. JPEG/WebP quality is fixed so that
# the same image always encodes to the same bytes with the same Pillow.
_PIL_SAVE = {
    "png": ("PNG", {}),
    "jpg": ("JPEG", {"quality": 95}),
    "webp": ("WEBP", {"quality": 95}),
}
SAMPLE_MEMBERS = frozenset(IMAGE_FORMATS + ("cls", "json"))
# Members a team may add beside ours (a ``.txt`` caption, an ``.npy`` embedding): readers skip
# them and verify lists them. Their extension is plain text so that a listing is safe to print.
_EXTRA_EXT_RE = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
EXTRA_EXT_MAX_CHARS = 64
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
_CLS_RE = re.compile(rb"^[0-9]+$")


def check_key(key: object) -> str | None:
    """Why ``key`` is not a valid sample key, or None if it is.

    WebDataset splits member names at the first dot and treats '/' as a directory, so keys are
    restricted to letters, digits, '_' and '-'.
    """
    if not isinstance(key, str) or not key:
        return f"key must be a non-empty string, got {key!r}"
    if not _KEY_RE.match(key):
        return f"key {key!r} may only contain letters, digits, '_' and '-' (no '.', '/', spaces)"
    return None


def make_key(round: int, source_id: str, sample_index: int, seed: int) -> str:
    """Deterministic key, no dots (WebDataset splits member names at the first dot):
    ``r0003_<source_id>_i000012_s<seed>``; ValueError on a source id containing '.' or '/'."""
    for name, value in (("round", round), ("sample_index", sample_index), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"make_key: {name} must be a non-negative int, got {value!r}")
    key = f"r{round:04d}_{source_id}_i{sample_index:06d}_s{seed}"
    problem = check_key(key)
    if problem is not None or not source_id:
        raise ValueError(f"make_key: source_id {source_id!r} cannot be part of a sample key: "
                         f"{problem or 'it is empty'}")
    return key


def encode_image(image, image_format: str = "png") -> bytes:
    """PIL image -> encoded bytes for one of :data:`IMAGE_FORMATS`."""
    if image_format not in _PIL_SAVE:
        raise ValueError(f"image_format must be one of {list(IMAGE_FORMATS)}, got {image_format!r}")
    pil_format, options = _PIL_SAVE[image_format]
    buf = io.BytesIO()
    image.save(buf, format=pil_format, **options)
    return buf.getvalue()


def encode_sample(sample: SyntheticSample, image_format: str = "png") -> dict:
    """-> ``{"__key__": key, "png"|"jpg"|"webp": bytes, "cls": b"3", "json": bytes}``.

    Raises ValueError on a bad key, a negative or non-int label, or missing provenance keys.
    """
    problem = check_key(sample.key)
    if problem is not None:
        raise ValueError(f"encode_sample: {problem}")
    if isinstance(sample.label, bool) or not isinstance(sample.label, int) or sample.label < 0:
        raise ValueError(f"encode_sample: sample {sample.key!r}: label must be a non-negative int, "
                         f"got {sample.label!r}")
    missing = [k for k in REQUIRED_PROVENANCE if k not in sample.provenance]
    if missing:
        raise ValueError(f"encode_sample: sample {sample.key!r}: provenance lacks {missing}")
    stored = sample.encoded[1] if sample.encoded is not None and sample.encoded[0] == image_format else None
    return {
        "__key__": sample.key,
        image_format: stored if stored is not None else encode_image(sample.image, image_format),
        "cls": str(sample.label).encode("ascii"),
        "json": json.dumps(sample.provenance, sort_keys=True, ensure_ascii=False).encode("utf-8"),
    }


def decode_label(data: bytes, where: str, key: str) -> int:
    """The ``cls`` member: ASCII decimal digits only."""
    if not isinstance(data, (bytes, bytearray)) or not _CLS_RE.match(bytes(data).strip()):
        raise FormatError(where, f"sample {key!r}: 'cls' must be an ASCII non-negative integer, "
                                 f"got {bytes(data)[:20]!r}")
    return int(bytes(data).strip())


def decode_provenance(data: bytes, where: str, key: str) -> dict:
    try:
        provenance = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(where, f"sample {key!r}: 'json' is not valid JSON ({e})") from None
    if not isinstance(provenance, dict):
        raise FormatError(where, f"sample {key!r}: 'json' must be an object")
    missing = [k for k in REQUIRED_PROVENANCE if k not in provenance]
    if missing:
        raise FormatError(where, f"sample {key!r}: provenance lacks required key(s) {missing}")
    problem = provenance_problem(provenance)
    if problem is not None:
        raise FormatError(where, f"sample {key!r}: provenance {problem}")
    return provenance


# The type of every provenance field a reader uses (actgen-data info and browse, the trainer's
# pool records): a data set that verifies never crashes a reader on an unexpected type.
_TEXT_FIELDS = ("class_name", "source_id", "prompt", "checkpoint_sha256", "tool_version")
_NESTED_TEXT = {"generator": ("id", "name", "weights_sha256", "dtype"), "guidance": ("mode", "bank_scope")}


def provenance_problem(p: dict) -> Optional[str]:
    """What is wrong with the types of a provenance object's fields, or None."""
    for name in _TEXT_FIELDS:
        if not isinstance(p[name], str):
            return f"field {name!r} must be a string, got {type(p[name]).__name__}"
    if not is_int(p["seed"]) or p["seed"] < 0:
        return f"field 'seed' must be an int >= 0, got {p['seed']!r:.40}"
    if p["round"] is not None and (not is_int(p["round"]) or p["round"] < 0):
        return f"field 'round' must be an int >= 0 or null, got {p['round']!r:.40}"
    for name, texts in _NESTED_TEXT.items():
        if not isinstance(p[name], dict):
            return f"field {name!r} must be an object, got {type(p[name]).__name__}"
        for sub in texts:
            if sub in p[name] and not isinstance(p[name][sub], str):
                return f"field '{name}.{sub}' must be a string, got {type(p[name][sub]).__name__}"
    for name in ("role",):
        if name in p and not isinstance(p[name], str):
            return f"field {name!r} must be a string, got {type(p[name]).__name__}"
    return None


# Pillow modes with more than 8 bits per sample. ``convert("RGB")`` clips them to 0/255, so
# :func:`to_rgb` scales them instead.
_UINT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# What Pillow raises on malformed image bytes (besides OSError, which covers truncation).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, struct.error, ZeroDivisionError)


def to_rgb(image, where: str, what: str):
    """A decoded PIL image -> PIL RGB, under one explicit policy for every image both programs read.

    - 8-bit modes (``L``, ``P``, ``RGB``, ``RGBA``, ``CMYK``, ``1`` ...) go through
      ``convert("RGB")``: palettes are applied, alpha is dropped.
    - 16-bit modes (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``) are scaled, ``v -> round(v / 257)``
      (0..65535 onto 0..255), never clipped.
    - ``I`` (32-bit integer) holds 16-bit data in practice (16-bit PNG and TIFF): values within
      0..65535 are scaled like 16-bit ones; other values cannot be mapped without clipping, so
      they are an error.
    - ``F`` (32-bit float): finite values within [0, 1] are scaled by 255; others are an error.

    Gray results are replicated into the three channels.

    Raises:
        FormatError: ``"<where>: <what>: ..."`` for pixels that cannot be mapped.
    """
    from PIL import Image

    mode = image.mode
    if mode not in _UINT16_MODES and mode not in ("I", "F"):
        return image.convert("RGB")
    import numpy as np

    pixels = np.asarray(image)
    if mode == "F":
        if pixels.size and not (np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0):
            raise FormatError(where, f"{what}: float (mode F) image with values outside [0, 1] "
                                     f"({np.nanmin(pixels):g}..{np.nanmax(pixels):g}); store it as 8 or 16 bits")
        gray = np.rint(pixels.astype(np.float64) * 255.0)
    else:
        if mode == "I" and pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
            raise FormatError(where, f"{what}: 32-bit (mode I) image with values outside 0..65535 "
                                     f"({pixels.min()}..{pixels.max()}); store it as 8 or 16 bits")
        gray = np.rint(pixels.astype(np.float64) / 257.0)
    return Image.fromarray(gray.astype(np.uint8), mode="L").convert("RGB")


def decode_image_bytes(data: bytes, where: str, what: str):
    """Encoded image bytes -> PIL RGB image (see :func:`to_rgb` for the pixel policy).

    Raises:
        FormatError: ``"<where>: <what> image ..."`` when the bytes do not decode, or the image
            has more pixels than Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``;
            Pillow itself only warns below twice that).
    """
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FormatError(where, f"{what} image is missing (got {type(data).__name__}, not bytes)")
    limit = Image.MAX_IMAGE_PIXELS

    def too_large(detail: str) -> FormatError:
        return FormatError(where, f"{what} image is too large to decode ({detail}; PIL.Image.MAX_IMAGE_PIXELS = "
                                  f"{limit}, a decompression-bomb guard)")

    try:
        with Image.open(io.BytesIO(data)) as img:
            if limit is not None and img.width * img.height > limit:
                raise too_large(f"{img.width}x{img.height} = {img.width * img.height} pixels")
            img.load()
            return to_rgb(img, where, what)
    except FormatError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own limit (twice ours), hit while opening
        raise too_large(str(e).rstrip(".")) from None
    except (UnidentifiedImageError, *_DECODE_ERRORS) as e:
        raise FormatError(where, f"{what} image does not decode ({e})") from None


def decode_image(data: bytes, where: str, key: str, ext: str):
    """A shard's image member -> PIL RGB image; FormatError naming the sample if it does not decode."""
    return decode_image_bytes(data, where, f"sample {key!r}: '{ext}'")


def is_extra_member(ext: str) -> bool:
    """Whether ``ext`` names a member that readers skip: not ours, and a plain extension."""
    return (ext.lower() not in SAMPLE_MEMBERS and len(ext) <= EXTRA_EXT_MAX_CHARS
            and _EXTRA_EXT_RE.match(ext) is not None)


def extra_members(members: dict) -> list[str]:
    """The extensions of one sample's members that are not ours (sorted)."""
    return sorted(k for k in members if not k.startswith("__") and k.lower() not in SAMPLE_MEMBERS)


def sample_members(members: dict, where: str) -> tuple[str, str]:
    """Check the member set of one key; -> ``(key, image extension)``.

    Members other than the image, ``cls`` and ``json`` are ignored when their extension is plain
    (see :func:`is_extra_member`); one that is not is refused.
    """
    key = members.get("__key__")
    problem = check_key(key)
    if problem is not None:
        raise FormatError(where, problem)
    present = {k for k in members if not k.startswith("__")}
    bad = sorted(ext for ext in present - SAMPLE_MEMBERS if not is_extra_member(ext))
    if bad:
        raise FormatError(where, f"sample {key!r}: member extension(s) {[b[:EXTRA_EXT_MAX_CHARS] for b in bad]} "
                                 f"are not plain (letters, digits, '_', '-', '.'; at most {EXTRA_EXT_MAX_CHARS} "
                                 "characters)")
    if not present & SAMPLE_MEMBERS:
        raise FormatError(where, f"sample {key!r} has none of the image, 'cls' and 'json' members, only "
                                 f"{sorted(present)} (a key that contains '.' is split this way)")
    images = [ext for ext in IMAGE_FORMATS if ext in present]
    if len(images) != 1:
        raise FormatError(where, f"sample {key!r}: needs exactly one image member of "
                                 f"{list(IMAGE_FORMATS)}, found {images}")
    for needed in ("cls", "json"):
        if needed not in present:
            raise FormatError(where, f"sample {key!r}: missing member '{needed}'")
    return key, images[0]


def decode_sample(members: dict, where: str = "") -> SyntheticSample:
    """Inverse of encode_sample; FormatError (naming ``where`` and the key) on bad members."""
    where = where or str(members.get("__url__", "<sample>"))
    key, ext = sample_members(members, where)
    return SyntheticSample(
        key=key,
        image=decode_image(members[ext], where, key, ext),
        label=decode_label(members["cls"], where, key),
        provenance=decode_provenance(members["json"], where, key),
    )
