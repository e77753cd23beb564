"""Object stores through fsspec: a data set in an S3 bucket (a real S3-protocol server, moto, on
loopback) verifies, is fetched with every shard's sha256 checked, and trains a run; a missing or
truncated object and a server that never answers fail with one line naming the object."""
from __future__ import annotations

import socket
import threading
import time

import pytest
from click.testing import CliRunner

from actgen.shards.errors import FormatError
from actgen.shards.reader import fetch, read_index
from actgen.shards.verify import verify

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.moto_server.threaded_moto_server")


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (any free port) for this module's tests."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)   # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """``(s3fs file system, bucket url)``: a fresh bucket, the AWS settings pointing at the server."""
    import uuid

    import s3fs

    for key, value in {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    bucket = f"actgen-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    import fsspec

    fsspec.config.conf.clear()   # no options from elsewhere
    yield fs, f"s3://{bucket}"


def _upload(fs, directory, url):
    for path in sorted(directory.iterdir()):
        fs.put_file(str(path), f"{url}/{path.name}")


def test_a_data_set_in_a_bucket_verifies_fetches_and_trains_a_run(s3, shard_dataset, write_digit_shards,
                                                                   tiny_train_config, tmp_path):
    from actgen.sharing.cli import main
    from actgen.trainer.run import run

    fs, bucket = s3
    directory, index, _ = shard_dataset
    _upload(fs, directory, f"{bucket}/cats")
    assert read_index(f"{bucket}/cats") == index
    assert verify(f"{bucket}/cats").class_counts == {"cat": 4, "dog": 3, "bird": 3}
    result = CliRunner().invoke(main, ["verify", f"{bucket}/cats"])
    assert result.exit_code == 0 and "ok, 10 samples in 3 shards" in result.output, result.output
    assert fetch(f"{bucket}/cats", tmp_path / "copy") == index
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == sorted(
        ["index.json", "_info.json", "README.md", *[s.filename for s in index.shards]])

    write_digit_shards(tmp_path / "digits", n=12)
    _upload(fs, tmp_path / "digits", f"{bucket}/digits")
    cfg = tiny_train_config("synthetic.source=none", "train.epochs=2", "rounds.horizon=1", "rounds.merge_epoch=2",
                            f"synthetic.static=[{bucket}/digits]")
    summary = run(cfg)
    assert summary["pool"][0]["location"] == f"{bucket}/digits" and summary["synthetic_seen_total"] > 0


def test_a_missing_or_truncated_object_names_it(s3, shard_dataset, tmp_path):
    fs, bucket = s3
    directory, index, _ = shard_dataset
    _upload(fs, directory, f"{bucket}/d")
    first = index.shards[0].filename
    data = fs.cat_file(f"{bucket}/d/{first}")
    fs.pipe_file(f"{bucket}/d/{first}", data[:-700])
    with pytest.raises(FormatError, match=rf"{first}: size is {len(data) - 700} bytes, index says {len(data)}"):
        verify(f"{bucket}/d")
    with pytest.raises(FormatError, match=first):
        fetch(f"{bucket}/d", tmp_path / "copy")
    assert not (tmp_path / "copy").exists()
    fs.rm_file(f"{bucket}/d/{first}")
    with pytest.raises(FormatError, match=rf"s3://.*/d/{first}: file not found"):
        verify(f"{bucket}/d")
    with pytest.raises(FormatError, match="no finished data set here"):
        read_index(f"{bucket}/nothing-here")


def test_a_store_that_never_answers_fails_in_bounded_time(monkeypatch):
    """A listener that accepts and then says nothing: the read fails after the store's read
    timeout (set short here), naming the object, instead of hanging."""
    import actgen.shards.transfer as transfer

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{listener.getsockname()[1]}", "AWS_ACCESS_KEY_ID": "t",
                       "AWS_SECRET_ACCESS_KEY": "t", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(transfer.FS_RETRIES, "s3", 1)
    monkeypatch.setitem(transfer.FS_OPTIONS, "s3", {
        "skip_instance_cache": True,
        "config_kwargs": {"connect_timeout": 1, "read_timeout": 1, "retries": {"max_attempts": 1}}})
    started = time.monotonic()
    try:
        with pytest.raises((TimeoutError, ConnectionError), match=r"s3://stalled/set/index.json"):
            read_index("s3://stalled/set")
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()
    assert time.monotonic() - started < 30


def test_a_scheme_no_installed_package_reads_is_one_clear_error(tiny_train_config, tmp_path):
    """Not "not finished yet": a trainer waiting on it would wait for ever."""
    from actgen.trainer.synthetic import look

    with pytest.raises(FormatError, match=r"nosuch://b/x/index.json: no installed package reads nosuch:// locations"):
        read_index("nosuch://b/x")
    with pytest.raises(FormatError, match="no installed package reads nosuch://"):
        look("nosuch://b/x")


def test_a_trainer_waits_for_its_rounds_in_a_bucket(s3, write_digit_shards, tiny_train_config, tmp_path):
    """``synthetic.pattern: s3://...`` with ``on_missing: wait``: the round's set appears in the
    bucket (index last) while the trainer polls, and joins the pool."""
    from actgen.trainer.run import run

    fs, bucket = s3
    write_digit_shards(tmp_path / "r0", n=8, round=0)

    def publish():
        time.sleep(1.0)
        files = sorted((tmp_path / "r0").iterdir(), key=lambda p: p.name == "index.json")   # index last
        for path in files:
            fs.put_file(str(path), f"{bucket}/r0/{path.name}")

    cfg = tiny_train_config("train.epochs=2", "rounds.horizon=1", "rounds.merge_epoch=2",
                            f"synthetic.pattern={bucket}/r{{round}}", "synthetic.on_missing=wait",
                            "synthetic.timeout_s=60", "synthetic.poll_s=0.2")
    thread = threading.Thread(target=publish)
    thread.start()
    try:
        summary = run(cfg)
    finally:
        thread.join()
    assert [(e["round"], e["location"], e["num_samples"]) for e in summary["pool"]] == [(0, f"{bucket}/r0", 8)]


def test_a_build_publishes_to_a_bucket_index_last_and_a_run_trains_from_it(s3, build_config, tiny_train_config,
                                                                           tmp_path, monkeypatch):
    import actgen.shards.publish as publish_module
    from actgen.builder.pipeline import run as build
    from actgen.sharing.cli import main
    from actgen.trainer.run import run

    fs, bucket = s3
    uploaded = []

    class Recording:      # the store publish() writes to, recording the order of the uploads
        def __init__(self, store):
            self.store = store

        def __getattr__(self, name):
            return getattr(self.store, name)

        def put_file(self, lpath, rpath, **kw):
            uploaded.append(rpath.rsplit("/", 1)[-1])
            return self.store.put_file(lpath, rpath, **kw)

    real_filesystem = publish_module.filesystem
    monkeypatch.setattr(publish_module, "filesystem", lambda url: (lambda f, p: (Recording(f), p))(*real_filesystem(url)))
    result = build(build_config("budget=4", f"output.publish={bucket}/sets/round-{{round}}"))
    url = f"{bucket}/sets/round-1"
    assert uploaded[-1] == "index.json" and "build.json" not in uploaded and len(uploaded) >= 4
    assert verify(url).num_samples == 4 == result.index.num_samples
    assert not {"build.json", "build_status.json"} & set(uploaded)

    # The CLI refuses to replace a finished set unless asked, and then replaces it index first.
    result_cli = CliRunner().invoke(main, ["publish", str(result.output), url])
    assert result_cli.exit_code == 2 and "already holds a finished data set" in result_cli.output
    result_cli = CliRunner().invoke(main, ["publish", str(result.output), url, "--overwrite"])
    assert result_cli.exit_code == 0 and "published" in result_cli.output, result_cli.output

    cfg = tiny_train_config("synthetic.source=none", "train.epochs=2", "rounds.horizon=1", "rounds.merge_epoch=2",
                            "data.source.path=builtin:digits", f"synthetic.static=[{url}]")
    summary = run(cfg)
    assert summary["pool"][0]["num_samples"] == 4 and summary["synthetic_seen_total"] > 0


def test_actgen_data_merges_sets_in_a_bucket_into_the_bucket(s3, write_digit_shards, tmp_path):
    from actgen.sharing.cli import main

    fs, bucket = s3
    for r in (0, 1):
        write_digit_shards(tmp_path / f"r{r}", n=6, round=r, seed=r)
        _upload(fs, tmp_path / f"r{r}", f"{bucket}/r{r}")
    invoke = CliRunner().invoke
    result = invoke(main, ["merge", f"{bucket}/all", f"{bucket}/r0", str(tmp_path / "r1")])
    assert result.exit_code == 0 and "12 images" in result.output, result.output
    index = read_index(f"{bucket}/all")
    assert index.num_samples == 12 and [s["path"] for s in index.created["sources"]] == ["r0", "r1"]
    assert verify(f"{bucket}/all").num_samples == 12
    result = invoke(main, ["merge", f"{bucket}/all", f"{bucket}/r0"])
    assert result.exit_code == 2 and "already holds a finished data set" in result.output
    result = invoke(main, ["info", f"{bucket}/all"])
    assert result.exit_code == 0 and f"{bucket}/all: 12 images" in result.output, result.output


def test_publishing_to_a_bucket_that_does_not_exist_names_it(s3, shard_dataset):
    from actgen.shards.publish import publish

    directory, _, _ = shard_dataset
    with pytest.raises(FormatError, match=r"s3://no-such-bucket-here/set: no such bucket or place"):
        publish(directory, "s3://no-such-bucket-here/set")
    with pytest.raises(ValueError, match="not an object-store URL"):
        publish(directory, "https://host/set")


def test_merge_and_filter_never_replace_their_own_source_in_a_bucket(s3, write_digit_shards, tmp_path):
    from actgen.sharing.cli import main

    fs, bucket = s3
    write_digit_shards(tmp_path / "a", n=6)
    _upload(fs, tmp_path / "a", f"{bucket}/a")
    before = {p: fs.info(p)["ETag"] for p in fs.ls(f"{bucket}/a")}
    invoke = CliRunner().invoke
    for argv in (["merge", f"{bucket}/a", f"{bucket}/a", "--overwrite"],
                 ["merge", f"{bucket}/a/", str(tmp_path / "a"), bucket.replace("s3://", "s3a://") + "/a",
                  "--overwrite"],
                 ["filter", f"{bucket}/a", f"{bucket}//a/.", "--checkpoint", str(tmp_path), "--overwrite"]):
        result = invoke(main, argv)
        assert result.exit_code == 2 and "is the source" in result.output, (argv, result.output)
    fs.invalidate_cache()
    assert {p: fs.info(p)["ETag"] for p in fs.ls(f"{bucket}/a")} == before
    assert verify(f"{bucket}/a").num_samples == 6


def test_publish_uploads_nothing_when_a_listed_shard_is_a_link(s3, write_digit_shards, tmp_path):
    from actgen.shards.publish import publish

    fs, bucket = s3
    write_digit_shards(tmp_path / "set", n=6)
    shard = sorted((tmp_path / "set").glob("*.tar"))[0]
    real = tmp_path / shard.name
    shard.rename(real)
    shard.symlink_to(real)
    with pytest.raises(FormatError, match=rf"{shard.name}.*symbolic link.*nothing was uploaded"):
        publish(tmp_path / "set", f"{bucket}/linked")
    assert not fs.exists(f"{bucket}/linked")


def test_publish_overwrite_leaves_exactly_the_new_set(s3, write_digit_shards, tmp_path):
    from actgen.shards.publish import publish

    fs, bucket = s3
    write_digit_shards(tmp_path / "old", n=12, num_shards=4)
    (tmp_path / "old" / "contact_sheet.png").write_bytes(b"\x89PNG old")
    (tmp_path / "old" / "notes.txt").write_text("a user's file: never published")
    publish(tmp_path / "old", f"{bucket}/set")
    assert "notes.txt" not in {p.rsplit("/", 1)[-1] for p in fs.ls(f"{bucket}/set")}
    write_digit_shards(tmp_path / "new", n=4, num_shards=2, seed=1)
    with pytest.raises(ValueError, match="already holds"):
        publish(tmp_path / "new", f"{bucket}/set")
    publish(tmp_path / "new", f"{bucket}/set", overwrite=True)
    fs.invalidate_cache()
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{bucket}/set"))
    expected = sorted(p.name for p in (tmp_path / "new").iterdir() if p.name != "build.json")
    assert names == expected and "contact_sheet.png" not in names
    assert verify(f"{bucket}/set").num_samples == 4


def test_a_trainer_never_waits_for_a_bucket_that_does_not_exist(s3, write_digit_shards, tmp_path):
    """A missing object in an existing bucket may still appear (waited for); a missing bucket
    cannot (reported at once, by name), nor one deleted while the trainer waits."""
    from actgen.shards.errors import Unreachable
    from actgen.trainer.config import SyntheticConfig
    from actgen.trainer.synthetic import wait_until_finished

    fs, bucket = s3
    cfg = SyntheticConfig(on_missing="wait", timeout_s=3600, poll_s=0.2)
    started = time.monotonic()
    with pytest.raises(Unreachable, match=r"s3://no-such-bucket-x1/r0.*no such bucket.*waiting cannot help"):
        wait_until_finished("s3://no-such-bucket-x1/r0", cfg, round=0)
    assert time.monotonic() - started < 30

    # An existing bucket without the set: waited for; the bucket deleted meanwhile ends the wait.
    def delete_bucket():
        time.sleep(1.0)
        fs.rm(bucket, recursive=True)

    thread = threading.Thread(target=delete_bucket)
    thread.start()
    try:
        with pytest.raises(Unreachable, match="no such bucket"):
            wait_until_finished(f"{bucket}/r0", cfg, round=0)
    finally:
        thread.join()
    assert time.monotonic() - started < 60


def test_real_images_in_a_bucket_load_with_the_fingerprint_they_have_on_disk(s3, tmp_path):
    """The labeled images themselves in an object store: an imported (save_to_disk) folder and a
    parquet object both load with the local copy's fingerprint; a folder that is neither is named."""
    from actgen.shards.errors import FormatError
    from actgen.shards.sources import DataSource, digits_dataset, load_source
    from actgen.sharing.importing import import_source

    fs, url = s3
    import_source(DataSource(), tmp_path / "arrow")
    _upload(fs, tmp_path / "arrow", f"{url}/digits-arrow")
    local = load_source(DataSource(path=str(tmp_path / "arrow")))
    remote = load_source(DataSource(path=f"{url}/digits-arrow"))
    assert remote.fingerprint == local.fingerprint and len(remote) == 1797 and remote.class_names == local.class_names
    digits_dataset().select(range(40)).to_parquet(str(tmp_path / "d.parquet"))
    fs.put_file(str(tmp_path / "d.parquet"), f"{url}/files/d.parquet")
    assert load_source(DataSource(path=f"{url}/files/d.parquet")).fingerprint == \
        load_source(DataSource(path=str(tmp_path / "d.parquet"))).fingerprint
    assert len(load_source(DataSource(path=f"{url}/files/*.parquet"))) == 40
    fs.put_file(str(tmp_path / "d.parquet"), f"{url}/loose/x.txt")
    with pytest.raises(FormatError, match="holds no state.json"):
        load_source(DataSource(path=f"{url}/loose"))
    with pytest.raises(FormatError, match="no such object"):
        load_source(DataSource(path=f"{url}/nothing.parquet"))
