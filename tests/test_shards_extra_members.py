"""Members a team adds beside ours (a caption, an embedding) are skipped by every reader, never
read by verify, and listed by verify and info; a member whose extension is not plain text is refused."""
from __future__ import annotations

import dataclasses
import io
import tarfile

import pytest
from click.testing import CliRunner

from actgen.shards.errors import FormatError
from actgen.shards.reader import ShardRandomAccess, iter_samples
from actgen.shards.verify import verify
from actgen.shards.writer import file_sha256, write_index
from actgen.sharing.cli import main


def _add_members(directory, index, extra: dict[str, bytes], every: int = 1):
    """Rewrite each shard with ``extra`` members after every ``every``-th sample's own, then reindex."""
    shards = []
    for shard in index.shards:
        path = directory / shard.filename
        with tarfile.open(path) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            keys_done = 0
            for i, (member, data) in enumerate(members):
                tar.addfile(member, io.BytesIO(data))
                key = member.name.split(".", 1)[0]
                last_of_key = i + 1 == len(members) or members[i + 1][0].name.split(".", 1)[0] != key
                if last_of_key:
                    if keys_done % every == 0:
                        for ext, payload in extra.items():
                            info = tarfile.TarInfo(f"{key}.{ext}")
                            info.size = len(payload)
                            tar.addfile(info, io.BytesIO(payload))
                    keys_done += 1
        path.write_bytes(out.getvalue())
        shards.append(dataclasses.replace(shard, sha256=file_sha256(path), size_bytes=path.stat().st_size))
    write_index(directory, dataclasses.replace(index, shards=shards))


def test_extra_members_are_skipped_by_every_reader_and_listed_by_verify(shard_dataset):
    directory, index, samples = shard_dataset
    before = [(s.key, s.label, s.provenance) for s in iter_samples(directory)]
    _add_members(directory, index, {"txt": b"a caption", "emb.npy": b"\x93NUMPY" + bytes(64)}, every=2)

    report = verify(directory)
    assert report.num_samples == 10
    # 3 shards of 4, 3, 3 samples: every other sample of each shard carries both members.
    assert report.extra_members == {"emb.npy": 6, "txt": 6}
    assert verify(directory, decode=False).extra_members == report.extra_members

    assert [(s.key, s.label, s.provenance) for s in iter_samples(directory)] == before
    access = ShardRandomAccess(directory)
    assert [access.key(i) for i in range(len(access))] == [k for k, _, _ in before]
    assert access.sample(0).encoded[0] == "png" and access[0][0].size == samples[0].image.size

    result = CliRunner().invoke(main, ["verify", str(directory)])
    assert result.exit_code == 0, result.output
    assert "other members (skipped by every reader): .emb.npy in 6 samples, .txt in 6 samples" in result.output
    result = CliRunner().invoke(main, ["info", str(directory)])
    assert result.exit_code == 0 and ".txt in 6 samples" in result.output, result.output


def test_verify_never_reads_an_extra_member(shard_dataset, monkeypatch):
    """An extra member's bytes are not even read: only ours reach ``read_member``."""
    import actgen.shards.verify as verify_module

    directory, index, _ = shard_dataset
    _add_members(directory, index, {"huge": b"x" * 100_000})
    sizes = []
    real = verify_module.read_member
    monkeypatch.setattr(verify_module, "read_member", lambda f, span: sizes.append(span[1]) or real(f, span))
    assert verify(directory).extra_members == {"huge": 10}
    assert sizes and max(sizes) < 100_000


@pytest.mark.parametrize("ext", ["txt\x1b[31m", "a b", "x" * 65])
def test_a_member_whose_extension_is_not_plain_is_refused(shard_dataset, ext):
    directory, index, _ = shard_dataset
    _add_members(directory, index, {ext: b"?"})
    with pytest.raises(FormatError, match="is not '<key>.<ext>'"):
        verify(directory)
    with pytest.raises(FormatError):
        ShardRandomAccess(directory)
