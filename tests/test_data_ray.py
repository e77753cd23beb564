"""``actgen-data import`` and ``verify`` with ``--ray-address``: they join a Ray cluster they did not
start (a head started by ``ray start --head`` on loopback, as on a cluster) and Ray Data's workers
do the work. The import's workers write the shards, decoding every image; the result has the
source's fingerprint, and a broken image fails the import naming its file and row, leaving nothing
at the output. Verify's workers check a shard each; a corrupted shard is named."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ray_env

from actgen.shards.sources import DataSource, load_source
from test_shards_sources import NAMES, _write_imagefolder

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _data(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "actgen-data"), *args], capture_output=True, text=True, timeout=300,
                          env=ray_env())


def _import(*args: str) -> subprocess.CompletedProcess:
    return _data("import", *args)


def test_import_and_verify_run_on_a_loopback_ray_cluster(ray_head, tmp_path, shard_dataset):
    folder = _write_imagefolder(tmp_path / "photos", per_class=4)
    source = load_source(DataSource(path=str(folder)))

    done = _import(str(folder), str(tmp_path / "arrow"), "--ray-address", ray_head, "--decode")
    assert done.returncode == 0, done.stderr
    # The head has 2 CPUs: at least one shard each, written by Ray Data's workers.
    assert "import on Ray: 2 shards on 2 workers" in done.stderr
    assert sorted(p.name for p in (tmp_path / "arrow").glob("*.arrow")) == [
        "data-00000-of-00002.arrow", "data-00001-of-00002.arrow"]
    imported = load_source(DataSource(path=str(tmp_path / "arrow")))
    assert imported.fingerprint == source.fingerprint and len(imported) == 8
    assert [imported.label(i) for i in range(8)] == [source.label(i) for i in range(8)]
    assert f"fingerprint {source.fingerprint[:12]} (the source's)" in done.stdout

    broken = folder / NAMES[0] / "3.png"
    broken.write_bytes(broken.read_bytes()[:20])
    failed = _import(str(folder), str(tmp_path / "again"), "--ray-address", ray_head, "--decode")
    assert failed.returncode == 2, failed.stderr
    assert f"{NAMES[0]}/3.png: row 3 image does not decode" in failed.stderr
    assert "Traceback" not in failed.stderr and not (tmp_path / "again").exists()

    # verify: 10 samples in 3 shards, one shard per worker at a time.
    directory, index, _ = shard_dataset
    checked = _data("verify", str(directory), "--ray-address", ray_head)
    assert checked.returncode == 0, checked.stderr
    assert "verifying 3 shards on Ray (2 workers)" in checked.stderr
    assert checked.stdout.startswith(f"{directory}: ok, 10 samples in 3 shards")
    third = directory / index.shards[2].filename
    data = bytearray(third.read_bytes())
    data[600] ^= 0xFF                                  # same size, other bytes
    third.write_bytes(bytes(data))
    bad = _data("verify", str(directory), "--ray-address", ray_head)
    assert bad.returncode == 2 and f"{third}: sha256 is " in bad.stderr and "Traceback" not in bad.stderr


def test_an_address_where_no_cluster_answers_is_refused_before_anything_is_written(tmp_path):
    folder = _write_imagefolder(tmp_path / "photos")
    failed = _import(str(folder), str(tmp_path / "arrow"), "--ray-address", "127.0.0.1:9")
    assert failed.returncode == 2
    assert "--ray-address = '127.0.0.1:9': no Ray cluster answers there" in failed.stderr
    assert not (tmp_path / "arrow").exists()
