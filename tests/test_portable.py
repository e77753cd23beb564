"""A data set names no absolute local path: shards' provenance, index.json, _info.json and the card."""
from __future__ import annotations

import json
import re
import tarfile

from actgen.builder.pipeline import run
from actgen.shards.portable import portable, portable_path
from actgen.shards.reader import ShardRandomAccess


def test_portable_paths(tmp_path):
    (tmp_path / "set" / "sub").mkdir(parents=True)
    root = tmp_path / "set"
    assert portable_path(str(root / "sub" / "x.bin"), root) == "sub/x.bin"
    assert portable_path(str(tmp_path / "models" / "sd21"), root) == "sd21"
    assert portable_path("~/models/sd21") == "sd21"
    for kept in ("stabilityai/stable-diffusion-2-1-base", "https://host/a/b", "builtin:digits", "tiny", "budget"):
        assert portable_path(kept, root) == kept
    assert portable({"a": [str(tmp_path / "m" / "g")], "b": 3}, root) == {"a": ["g"], "b": 3}


def test_no_absolute_path_leaves_with_a_data_set(build_config, tiny_generator, tmp_path):
    # Every input given by an absolute path: the generator folder, checkpoint, manifest, output.
    tiny_generator.save_pretrained(tmp_path / "models" / "my-generator")
    out = tmp_path / "shards"
    run(build_config(f"generator.path={tmp_path / 'models' / 'my-generator'}",
                     f"generator.attention_resolution={tiny_generator.attention.resolution}", output=out))
    absolute = re.compile(r"(?<![\w:])/(?:tmp|work|home|root|Users|var|private)/")
    scanned = []
    for name in ("index.json", "_info.json", "README.md"):
        text = (out / name).read_text()
        assert str(tmp_path) not in text and not absolute.search(text), name
        scanned.append(name)
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    text = tar.extractfile(member).read().decode()
                    assert str(tmp_path) not in text and not absolute.search(text), (shard.name, member.name)
                    scanned.append(member.name)
    assert len(scanned) > 3
    provenance = ShardRandomAccess(out).provenance(0)
    assert provenance["generator"]["id"] == "my-generator" and len(provenance["generator"]["weights_sha256"]) == 64
    index = json.loads((out / "index.json").read_text())
    assert index["created"]["generator"] == {"name": "my-generator",
                                             "weights_sha256": provenance["generator"]["weights_sha256"]}
