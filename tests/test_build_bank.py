"""The memory bank as the paper keeps it: a round starts from the banks of the run's earlier rounds.

Tested by effect: with round 0's bank present, the contrastive term pushes round 1's renders away
from round 0's latents; the bank a round starts from is recorded in build.json; one worker and two
give the same bytes; a resumed build renders the same bytes again.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from actgen.builder.bank_store import BANK_FILE, load_entries
from actgen.builder.config import load_config
from actgen.builder.pipeline import run
from actgen.shards.reader import read_index
from actgen.shards.writer import file_sha256

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# Every image actgen with a strong contrastive term and nothing else.
BANK = ("mode=actgen", "schedule.enabled=false", "budget=8", "guidance.use_adversarial=false",
        "guidance.use_mask=false", "guidance.guidance_steps=3", "guidance.step_size=0.5", "guidance.margin=100")


@pytest.fixture
def run_rounds(tmp_path, write_round):
    """A run folder with rounds 0 and 1 (bundle + manifest each)."""
    run_dir = tmp_path / "run"
    for r in (0, 1):
        write_round(run_dir / "rounds" / str(r), round=r)
    return run_dir


def _config(run_dir, r, build_fast, *sets, output=None):
    folder = run_dir / "rounds" / str(r)
    return load_config(None, [f"checkpoint={folder / 'checkpoint'}", f"manifest={folder / 'hard_samples.json'}",
                              f"output.path={output or folder / 'shards'}", *build_fast, *BANK, *sets])


def _min_distances(renders, bank) -> np.ndarray:
    """Per render, the distance to the nearest earlier latent of its class."""
    out = []
    for y, z in zip(renders.labels, renders.latents.astype(np.float32)):
        same = bank.latents[bank.labels == y].astype(np.float32)
        out.append(np.linalg.norm((same - z).reshape(len(same), -1), axis=1).min())
    return np.array(out)


def test_a_round_starts_from_the_earlier_rounds_bank_and_moves_away_from_it(run_rounds, build_fast, tmp_path):
    first = run(_config(run_rounds, 0, build_fast))
    bank0 = load_entries(first.output / BANK_FILE)
    assert len(bank0) == 8                                   # every actgen render's final latent
    assert read_index(first.output).created["memory_bank"]["sha256"] == file_sha256(first.output / BANK_FILE)
    start0 = json.loads((first.output / "build.json").read_text())["settings"]["bank_start"]
    assert start0["rounds"] == [] and start0["entries"] == 0

    with_bank = run(_config(run_rounds, 1, build_fast))
    start1 = json.loads((with_bank.output / "build.json").read_text())["settings"]["bank_start"]
    assert start1["rounds"] == [0] and start1["entries"] == 8
    assert start1["entries_per_class"] == bank0.per_class()
    # The same round with an empty bank per shard: the same plan, seeds and guides.
    fresh = run(_config(run_rounds, 1, build_fast, "bank_scope=shard", output=tmp_path / "fresh"))
    pushed = load_entries(with_bank.output / BANK_FILE)
    plain = load_entries(fresh.output / BANK_FILE)
    assert (pushed.labels == plain.labels).all()
    near_pushed, near_plain = _min_distances(pushed, bank0), _min_distances(plain, bank0)
    # Renders whose class round 0 rendered are pushed away from round 0's latents.
    has_class = np.isin(pushed.labels, bank0.labels)
    assert has_class.any()
    assert (near_pushed[has_class] > near_plain[has_class] + 1e-3).all(), (near_pushed, near_plain)


def test_a_resumed_round_renders_the_same_bytes(run_rounds, build_fast):
    run(_config(run_rounds, 0, build_fast))
    built = run(_config(run_rounds, 1, build_fast))
    shas = {p.name: file_sha256(p) for p in sorted(built.output.glob("*.tar"))} | \
        {BANK_FILE: file_sha256(built.output / BANK_FILE)}
    (built.output / "index.json").unlink()                # unfinished: every shard is rendered again
    next(iter(sorted(built.output.glob("*.tar")))).unlink()
    again = run(_config(run_rounds, 1, build_fast))
    assert again.rendered                                   # it did render
    assert {p.name: file_sha256(p) for p in sorted(again.output.glob("*.tar"))} | \
        {BANK_FILE: file_sha256(again.output / BANK_FILE)} == shas


def test_a_changed_earlier_bank_is_refused_by_its_index(run_rounds, build_fast):
    first = run(_config(run_rounds, 0, build_fast))
    data = bytearray((first.output / BANK_FILE).read_bytes())
    data[-1] ^= 1
    (first.output / BANK_FILE).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="memory_bank.safetensors: sha256 is"):
        run(_config(run_rounds, 1, build_fast))


@pytest.mark.slow
def test_one_worker_and_two_workers_write_the_same_bytes(run_rounds, build_fast, tmp_path):
    import ray

    run(_config(run_rounds, 0, build_fast))
    sources = f"bank_sources=[{run_rounds / 'rounds' / '0' / 'shards'}]"
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        # Both on Ray actors (the same thread settings), one actor vs two.
        built = {n: run(_config(run_rounds, 1, build_fast, "output.samples_per_shard=2", "ray.executor=ray",
                                f"ray.workers={n}", sources, output=tmp_path / f"w{n}")) for n in (1, 2)}
    finally:
        ray.shutdown()
    start = json.loads((tmp_path / "w1" / "build.json").read_text())["settings"]["bank_start"]
    assert start["entries"] == 8                                  # round 0's bank was used
    names = sorted(p.name for p in built[1].output.glob("*.tar"))
    assert len(names) == 4 and names == sorted(p.name for p in built[2].output.glob("*.tar"))
    for name in [*names, BANK_FILE]:
        assert file_sha256(built[1].output / name) == file_sha256(built[2].output / name), name


def _replace_bank(output, labels, latents):
    """Swap a finished round's bank for other entries, its index's sha256 updated to match (a bank
    that verifies but is wrong for this run)."""
    from actgen.builder.bank_store import BankEntries, save_entries
    from actgen.shards.writer import INDEX_FILE

    sha = save_entries(output / BANK_FILE, BankEntries(np.asarray(labels, np.int64), latents), 0)
    index = json.loads((output / INDEX_FILE).read_text())
    index["created"]["memory_bank"]["sha256"] = sha
    (output / INDEX_FILE).write_text(json.dumps(index))


@pytest.mark.parametrize("case", ["label", "shape", "nan"])
def test_an_earlier_bank_is_checked_before_rendering_naming_its_file(run_rounds, build_fast, case):
    first = run(_config(run_rounds, 0, build_fast))
    good = load_entries(first.output / BANK_FILE)
    labels, latents = good.labels.copy(), good.latents.copy()
    if case == "label":
        labels[0] = 99                                             # 10 classes
    elif case == "shape":
        latents = np.zeros((len(labels), 3, 5, 5), np.float16)     # not this generator's 4x8x8
    else:
        latents[0, 0, 0, 0] = np.nan
    _replace_bank(first.output, labels, latents)
    expected = {"label": "label 99 is outside the build's 10 classes", "shape": "latents are \\[3, 5, 5\\]",
                "nan": "latents must be finite"}[case]
    with pytest.raises(ValueError, match=f"{BANK_FILE}.*{expected}|{expected}.*{BANK_FILE}"):
        run(_config(run_rounds, 1, build_fast))
    assert not (run_rounds / "rounds" / "1" / "shards" / "index.json").exists()


def test_a_total_cap_binds_at_any_class_count_evicting_from_the_fullest_class():
    import torch

    from actgen.builder.bank import MemoryBank

    bank = MemoryBank(capacity=1024, sample_size=8, total_capacity=6)
    z = torch.arange(10, dtype=torch.float32).reshape(10, 1, 1, 1).expand(10, 3, 2, 2)
    bank.add([0, 0, 0, 0, 1, 1, 2, 3, 3, 3], z)
    # 10 latents over 4 classes, 6 kept: each time the class holding the most lost its oldest.
    assert len(bank) == 6
    kept = {y: z[:, 0, 0, 0].tolist() for y, z in bank.state_dict().items()}
    # v6 arrives: class 0 (4) loses v0; v7: class 0 (3) loses v1; v8: classes 0, 1, 3 hold 2, the
    # lowest label loses v2; v9: class 3 (3) loses v7.
    assert kept == {0: [3.0], 1: [4.0, 5.0], 2: [6.0], 3: [8.0, 9.0]}
    # Without the total cap the per-class cap alone keeps all ten.
    free = MemoryBank(capacity=1024, sample_size=8)
    free.add([0, 0, 0, 0, 1, 1, 2, 3, 3, 3], z)
    assert len(free) == 10


def _entries(labels, seed=0):
    from actgen.builder.bank_store import BankEntries

    rng = np.random.default_rng(seed)
    return BankEntries(np.asarray(labels, np.int64), rng.standard_normal((len(labels), 2, 2, 2)).astype(np.float16))


@pytest.mark.parametrize("capacity, total", [(3, None), (3, 7), (100, 5)])
def test_the_kept_start_bank_is_what_a_memory_bank_holds_after_every_entry(capacity, total):
    import torch

    from actgen.builder.bank import MemoryBank
    from actgen.builder.bank_store import kept_entries

    entries = _entries(np.random.default_rng(1).integers(0, 4, 60))
    full, kept = MemoryBank(capacity, 8, total), MemoryBank(capacity, 8, total)
    full.add(entries.labels.tolist(), torch.from_numpy(entries.latents))
    small = kept_entries(entries, capacity, total)
    kept.add(small.labels.tolist(), torch.from_numpy(small.latents))
    assert len(small) == len(full) < len(entries)
    a, b = full.state_dict(), kept.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_worker_reads_only_the_new_rounds_bank_and_keeps_what_its_capacities_bound(tmp_path, monkeypatch):
    import actgen.builder.bank_store as store

    files = []
    for r in range(4):
        path = tmp_path / f"bank-{r}.safetensors"
        store.save_entries(path, _entries(np.random.default_rng(r).integers(0, 3, 20), seed=r), round=r)
        files.append(str(path))
    monkeypatch.setattr(store, "_START", {})
    read = []
    real = store.load_entries
    monkeypatch.setattr(store, "load_entries", lambda f: read.append(f) or real(f))
    for r in range(1, 5):
        got = store.incremental_start(files[:r], 4, 10)
        expected = store.kept_entries(store.BankEntries.concat([real(f) for f in files[:r]]), 4, 10)
        assert np.array_equal(got.labels, expected.labels) and np.array_equal(got.latents, expected.latents)
        assert len(got) <= 10
    assert read == files                       # each file read once, in round order
    # A file changed on disk (another build wrote it) is read again, with everything after it.
    store.save_entries(files[1], _entries([0, 1], seed=9), round=1)
    store.incremental_start(files, 4, 10)
    assert read[4:] == files


def test_the_driver_hashes_each_earlier_bank_once_and_again_only_when_it_changes(run_rounds, build_fast,
                                                                                 monkeypatch):
    import actgen.builder.bank_store as store

    for r in (0, 1):
        run(_config(run_rounds, r, build_fast))
    out = run_rounds
    hashed = []
    real = store.file_sha256
    monkeypatch.setattr(store, "file_sha256", lambda p: hashed.append(str(p)) or real(p))
    monkeypatch.setattr(store, "_FACTS", {})
    output = out / "rounds" / "2" / "shards"
    first = store.start_bank(output, 2, None)
    again = store.start_bank(output, 2, None)
    assert first == again and len(hashed) == 2          # rounds 0 and 1, hashed once
    bank = out / "rounds" / "0" / "shards" / BANK_FILE
    bank.write_bytes(bank.read_bytes() + b" ")          # changed: hashed again, refused by its index
    with pytest.raises(ValueError, match="sha256 is"):
        store.start_bank(output, 2, None)
    assert len(hashed) == 3
