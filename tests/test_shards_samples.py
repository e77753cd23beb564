"""One sample <-> WebDataset members: keys, encoding, decoding, validation."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from actgen.shards.errors import FormatError
from actgen.shards.samples import REQUIRED_PROVENANCE, decode_sample, encode_sample, make_key


def test_make_key():
    key = make_key(3, "0123456789ab-00000042", 12, 987)
    assert key == "r0003_0123456789ab-00000042_i000012_s987"
    assert "." not in key
    for bad in ("a.b", "a/b", ""):
        with pytest.raises(ValueError, match="source_id"):
            make_key(1, bad, 0, 0)
    with pytest.raises(ValueError, match="seed"):
        make_key(1, "x", 0, -1)


@pytest.mark.parametrize("image_format", ["png", "jpg", "webp"])
def test_round_trip(make_synthetic_samples, image_format):
    from PIL import Image

    sample = make_synthetic_samples(1, size=(16, 16))[0]
    # A smooth gradient: lossy codecs keep it close (random noise they would not).
    ramp = np.linspace(0, 255, 16, dtype=np.uint8)
    smooth = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 128 + 0 * ramp[None, :]), -1)
    sample = dataclasses.replace(sample, image=Image.fromarray(smooth.astype(np.uint8), "RGB"))
    members = encode_sample(sample, image_format)
    assert set(members) == {"__key__", image_format, "cls", "json"}
    assert members["cls"] == b"0" and members["__key__"] == sample.key
    decoded = decode_sample(members, "shard.tar")
    assert decoded.key == sample.key and decoded.label == sample.label
    assert decoded.provenance == sample.provenance
    assert decoded.image.mode == "RGB" and decoded.image.size == sample.image.size
    original, back = np.asarray(sample.image, dtype=float), np.asarray(decoded.image, dtype=float)
    if image_format == "png":
        assert np.array_equal(original, back)
    else:  # lossy, but close
        assert np.abs(original - back).mean() < 8


def test_encoding_is_deterministic(make_synthetic_samples):
    a, b = make_synthetic_samples(2, seed=5), make_synthetic_samples(2, seed=5)
    assert encode_sample(a[1]) == encode_sample(b[1])


def test_encode_rejects_bad_samples(make_synthetic_samples):
    sample = make_synthetic_samples(1)[0]
    with pytest.raises(ValueError, match="key"):
        encode_sample(dataclasses.replace(sample, key="a.b"))
    with pytest.raises(ValueError, match="label"):
        encode_sample(dataclasses.replace(sample, label=-1))
    with pytest.raises(ValueError, match=r"provenance lacks \['prompt'\]"):
        encode_sample(dataclasses.replace(sample, provenance={k: v for k, v in sample.provenance.items()
                                                             if k != "prompt"}))
    with pytest.raises(ValueError, match="image_format"):
        encode_sample(sample, "gif")


def test_decode_names_where_and_key(make_synthetic_samples):
    members = encode_sample(make_synthetic_samples(1)[0])
    key = members["__key__"]

    def check(change, pattern):
        bad = {**members, **change}
        bad = {k: v for k, v in bad.items() if v is not None}
        with pytest.raises(FormatError, match=pattern) as err:
            decode_sample(bad, "synth-000001.tar")
        assert err.value.where == "synth-000001.tar"

    check({"cls": b"cat"}, f"sample '{key}': 'cls' must be an ASCII non-negative integer")
    check({"cls": None}, "missing member 'cls'")
    check({"json": b"{"}, "'json' is not valid JSON")
    provenance = json.loads(members["json"])
    del provenance["seed"]
    check({"json": json.dumps(provenance).encode()}, r"provenance lacks required key\(s\) \['seed'\]")
    check({"png": b"not an image"}, "'png' image does not decode")
    check({"jpg": members["png"]}, "exactly one image member")
    check({"txt\x1b[31m": b"hi"}, r"member extension\(s\) \['txt\\x1b\[31m'\] are not plain")
    assert decode_sample({**members, "txt": b"a caption", "emb.npy": b"\x93NUMPY"}, "s.tar").key == key
    assert set(REQUIRED_PROVENANCE) <= set(provenance) | {"seed"}
