"""Splits, the mixing batch sampler, transforms and the training set."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from actgen.trainer.config import InputConfig, LoaderConfig
from actgen.trainer.data import MixedBatchSampler, TrainingSet, build_train_loader, split_indices
from actgen.trainer.transforms import build_eval_transform, build_train_transform

LABELS = np.repeat(np.arange(5), [40, 30, 20, 60, 50])  # 200 images, unbalanced classes


def test_split_is_stratified_disjoint_and_complete():
    s = split_indices(LABELS, holdout_fraction=0.1, test_fraction=0.2, seed=3)
    assert (len(s.train), len(s.holdout), len(s.test)) == (140, 20, 40)
    together = np.concatenate([s.train, s.holdout, s.test])
    assert sorted(together.tolist()) == list(range(200))  # disjoint and complete
    for part, share in ((s.holdout, 0.1), (s.test, 0.2)):
        counts = Counter(LABELS[part].tolist())
        for c, n in Counter(LABELS.tolist()).items():
            assert counts[c] == round(n * share)  # class shares preserved


def test_split_is_deterministic_by_seed():
    a = split_indices(LABELS, 0.1, 0.0, seed=1)
    b = split_indices(LABELS, 0.1, 0.0, seed=1)
    c = split_indices(LABELS, 0.1, 0.0, seed=2)
    assert np.array_equal(a.holdout, b.holdout) and np.array_equal(a.train, b.train)
    assert not np.array_equal(a.holdout, c.holdout)
    assert len(a.test) == 0


def test_split_too_small_for_the_classes_names_the_key():
    with pytest.raises(ValueError, match="config key 'data.holdout_fraction' = 0.01"):
        split_indices(LABELS, 0.01, 0.0, seed=0)  # 2 images for 5 classes


def _flat(sampler):
    return [i for batch in sampler for i, _ in batch]


def test_uniform_sampler_is_a_seeded_permutation_per_epoch():
    s = MixedBatchSampler(num_real=100, num_synthetic=30, batch_size=16, mixing="uniform", seed=7)
    s.set_epoch(0)
    first = _flat(s)
    assert len(s) == 130 // 16 and len(first) == len(set(first)) == 8 * 16  # drop_last, no repeats
    assert s.num_synthetic_images() == sum(i >= 100 for i in first)
    again = MixedBatchSampler(num_real=100, num_synthetic=30, batch_size=16, mixing="uniform", seed=7)
    again.set_epoch(0)
    assert _flat(again) == first  # a function of (seed, epoch) only
    s.set_epoch(1)
    assert _flat(s) != first
    full = MixedBatchSampler(100, 30, 16, "uniform", seed=7, drop_last=False)
    assert sorted(_flat(full)) == list(range(130))


def test_fraction_rule_gives_exactly_that_share_per_batch():
    s = MixedBatchSampler(num_real=100, num_synthetic=7, batch_size=16, mixing="fraction", synthetic_per_batch=4,
                          seed=0)
    for epoch in range(3):
        s.set_epoch(epoch)
        batches = [[i for i, _ in b] for b in s]
        assert len(batches) == 100 // 12  # an epoch is one pass over the real images
        for b in batches:
            assert len(b) == 16 and sum(i >= 100 for i in b) == 4
        real = [i for b in batches for i in b if i < 100]
        assert len(real) == len(set(real))  # each real image at most once
        synthetic = Counter(i for b in batches for i in b if i >= 100)
        assert max(synthetic.values()) - min(synthetic.values()) <= 1  # the pool is cycled evenly
        assert s.num_synthetic_images() == 4 * len(batches)


def test_fraction_rule_without_a_pool_is_all_real():
    s = MixedBatchSampler(num_real=50, num_synthetic=0, batch_size=10, mixing="fraction", synthetic_per_batch=3)
    assert [len(b) for b in s] == [10] * 5 and s.num_synthetic_images() == 0


@pytest.mark.parametrize("mixing", ["uniform", "fraction"])
def test_distributed_ranks_split_the_global_batches(mixing):
    kw = dict(num_real=100, num_synthetic=20, batch_size=8, mixing=mixing, synthetic_per_batch=2, seed=5)
    single = MixedBatchSampler(**kw)
    ranks = [MixedBatchSampler(**kw, rank=r, world_size=2) for r in range(2)]
    global_batches = [[i for i, _ in b] for b in single]
    per_rank = [[[i for i, _ in b] for b in r] for r in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == len(global_batches) // 2
    # Rank r takes global batches r, r + 2, ...: the same images as one process, split in two.
    for k in range(len(per_rank[0])):
        assert per_rank[0][k] == global_batches[2 * k] and per_rank[1][k] == global_batches[2 * k + 1]
    seeds = [s for r in ranks for b in r for _, s in b]
    assert len(seeds) == len(set(seeds))


class _Images:
    """A stand-in ``LabeledImages``: random RGB images of varying size."""

    def __init__(self, n=20, seed=0):
        rng = np.random.default_rng(seed)
        self._images = [Image.fromarray(rng.integers(0, 255, (8 + i % 5, 9, 3), dtype=np.uint8)) for i in range(n)]
        self._labels = np.arange(n) % 3

    def __len__(self):
        return len(self._images)

    def image(self, i):
        return self._images[i]

    def labels(self):
        return self._labels.copy()


@pytest.mark.parametrize("crop", ["random_resized", "pad", "none"])
def test_transforms_resize_to_the_model_input(crop):
    cfg = InputConfig(image_size=12, crop=crop)
    image = Image.new("RGB", (40, 30), (10, 200, 30))
    assert build_train_transform(cfg)(image).shape == (3, 12, 12)
    assert build_eval_transform(cfg)(image).shape == (3, 12, 12)


def test_augmentations_are_reproducible_with_loader_workers():
    from actgen.trainer.data import RealImages

    images = _Images()
    transform = build_train_transform(InputConfig(image_size=8, crop="random_resized", re_prob=0.5))
    dataset = TrainingSet([RealImages(images, np.arange(20), transform)])

    def epoch(workers):
        sampler = MixedBatchSampler(20, 0, 5, "uniform", seed=1)
        loader = build_train_loader(dataset, sampler, LoaderConfig(num_workers=workers, persistent_workers=True))
        out = []
        for e in range(2):
            sampler.set_epoch(e)
            out.append(torch.cat([x for x, _ in loader]))
        return out

    one, two = epoch(1), epoch(2)
    # Per-sample seeds make worker count irrelevant; persistent workers still vary by epoch.
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    assert not torch.equal(one[0], one[1])


def test_placebo_draws_add_real_images_to_an_epoch_and_nothing_else():
    from actgen.trainer.data import MixedBatchSampler

    plain = MixedBatchSampler(num_real=50, num_synthetic=0, batch_size=10, mixing="uniform", seed=3)
    placebo = MixedBatchSampler(num_real=50, num_synthetic=0, batch_size=10, mixing="uniform", seed=3, extra_real=30)
    with_pool = MixedBatchSampler(num_real=50, num_synthetic=30, batch_size=10, mixing="uniform", seed=3)
    # The same optimizer steps as a run with 30 synthetic images, all of them real.
    assert len(plain) == 5 and len(placebo) == len(with_pool) == 8
    drawn = [i for batch in placebo for i, _ in batch]
    assert len(drawn) == 80 and all(0 <= i < 50 for i in drawn)
    counts = Counter(drawn)
    assert set(counts) == set(range(50)) and max(counts.values()) == 2     # every image once, 30 twice
    # Without placebo draws the sampler is what it always was (old runs reproduce).
    assert [b for b in plain] == [b for b in MixedBatchSampler(50, 0, 10, "uniform", seed=3)]


def test_class_balance_makes_the_synthetic_draws_follow_the_real_prior():
    from actgen.trainer.data import class_balance_weights

    real = np.repeat([0, 1, 2], [50, 30, 20])                   # the real prior: 0.5, 0.3, 0.2
    synthetic = np.repeat([0, 1, 2], [5, 90, 5])                # a round that rendered class 1 mostly
    w = class_balance_weights(real, synthetic, num_classes=4)   # class 3: neither real nor synthetic
    assert w.sum() == pytest.approx(1.0) and (w > 0).all()
    assert [w[synthetic == y].sum() for y in range(3)] == pytest.approx([0.5, 0.3, 0.2])
    # Drawn by the sampler over epochs, in both mixing rules: the real prior, within noise.
    for mixing, per_batch in (("uniform", 0), ("fraction", 4)):
        s = MixedBatchSampler(num_real=100, num_synthetic=100, batch_size=16, mixing=mixing,
                              synthetic_per_batch=per_batch, seed=1, synthetic_weights=w)
        drawn = []
        for epoch in range(30):
            s.set_epoch(epoch)
            drawn += [i - 100 for batch in s for i, _ in batch if i >= 100]
        share = np.bincount(synthetic[drawn], minlength=3) / len(drawn)
        assert share == pytest.approx([0.5, 0.3, 0.2], abs=0.03), mixing
    # Without weights class 1 dominates, as rendered.
    plain = MixedBatchSampler(num_real=100, num_synthetic=100, batch_size=16, mixing="uniform", seed=1)
    drawn = [i - 100 for batch in plain for i, _ in batch if i >= 100]
    assert np.bincount(synthetic[drawn], minlength=3)[1] / len(drawn) > 0.85


def test_the_pool_indexes_each_data_set_once_however_often_the_loader_is_rebuilt(write_digit_shards, tmp_path,
                                                                                 monkeypatch):
    import actgen.shards.reader as reader
    import actgen.trainer.data as data
    import actgen.trainer.pool_images as pool_images
    from actgen.shards.sources import DataSource, load_source
    from actgen.trainer.config import InputConfig

    a, b = write_digit_shards(tmp_path / "a", n=6, round=0), write_digit_shards(tmp_path / "b", n=6, round=1)
    built = []
    real = reader.ShardRandomAccess

    class Counting(real):
        def __init__(self, directory, record=None):
            built.append(str(directory))
            super().__init__(directory, record)

    monkeypatch.setattr(reader, "ShardRandomAccess", Counting)
    monkeypatch.setattr(pool_images, "_INDEXED", {})
    digits = load_source(DataSource())
    cfg = InputConfig(image_size=16, crop="none", hflip=0.0)
    first = data.make_training_set(digits, [range(10)], [a], cfg)
    second = data.make_training_set(digits, [range(10)], [a, b], cfg)      # round 1 joins
    assert built == [str(a), str(b)] and len(second) == len(first) + 6
    # A set rewritten in place (its index.json changed) is indexed again.
    write_digit_shards(tmp_path / "a2", n=4, round=0)
    (a / "index.json").write_text((tmp_path / "a2" / "index.json").read_text())
    for shard in (tmp_path / "a2").glob("*.tar"):
        (a / shard.name).write_bytes(shard.read_bytes())
    assert len(data.make_training_set(digits, [range(10)], [a], cfg)) == 14 and built[-1] == str(a)


def test_a_pool_sets_index_is_kept_in_its_folder_and_a_new_process_reads_it_instead_of_the_tars(
        write_digit_shards, tmp_path, monkeypatch):
    import json

    import actgen.shards.reader as reader
    import actgen.trainer.pool_images as pool_images
    from actgen.trainer.config import InputConfig
    from actgen.trainer.data import SyntheticImages
    from actgen.trainer.transforms import build_train_transform

    pool = write_digit_shards(tmp_path / "synthetic" / "round-0", n=12, round=0)
    transform = build_train_transform(InputConfig(image_size=16, crop="none", hflip=0.0))
    monkeypatch.setattr(pool_images, "_INDEXED", {})
    first = SyntheticImages(pool, transform)
    record = pool / pool_images.SAMPLE_INDEX_FILE
    assert record.is_file() and not first.shards.from_record
    keys, labels = [first.shards.key(i) for i in range(len(first))], first.labels().tolist()

    def no_scan(*args, **kwargs):
        raise AssertionError("the tars were scanned")

    # A new process: the record stands for the scan, with the same samples in the same order.
    monkeypatch.setattr(pool_images, "_INDEXED", {})
    with monkeypatch.context() as m:
        m.setattr(reader, "scan_tar", no_scan)
        again = SyntheticImages(pool, transform)
        assert again.shards.from_record
        assert [again.shards.key(i) for i in range(len(again))] == keys and again.labels().tolist() == labels
        assert again.shards[3][1] == first.shards[3][1]

    good = json.loads(record.read_text())

    def ignored(text: str) -> None:
        """A record like this is not used: the set is scanned again, and the record rewritten."""
        record.write_text(text)
        monkeypatch.setattr(pool_images, "_INDEXED", {})
        redone = SyntheticImages(pool, transform)
        assert not redone.shards.from_record and redone.labels().tolist() == labels
        assert json.loads(record.read_text()) == json.loads(json.dumps(redone.shards.record()))

    bad_label = json.loads(json.dumps(good))
    bad_label["entries"][0][5] = 10                      # outside the set's 10 classes
    ignored(json.dumps(bad_label))
    past_end = json.loads(json.dumps(good))
    past_end["entries"][0][3] = [past_end["entries"][0][3][0], 10 ** 9]   # a span past the shard's end
    ignored(json.dumps(past_end))
    short = json.loads(json.dumps(good))
    short["entries"] = short["entries"][1:]
    ignored(json.dumps(short))
    ignored("{not json")
    # A shard changed since (another inode, mtime, ctime): the stamps no longer match.
    shard = sorted(pool.glob("*.tar"))[0]
    shard.write_bytes(shard.read_bytes())
    stale = json.loads(record.read_text())
    shard.write_bytes(shard.read_bytes())
    ignored(json.dumps(stale))
    # A link in the record's place is never read.
    record.unlink()
    (tmp_path / "elsewhere.json").write_text(json.dumps(good))
    record.symlink_to(tmp_path / "elsewhere.json")
    monkeypatch.setattr(pool_images, "_INDEXED", {})
    assert not SyntheticImages(pool, transform).shards.from_record


# ---------------------------------------------------------------- loader.normalize: device
def _digit_batches(transform, n=16):
    from torch.utils.data import DataLoader

    from actgen.shards.sources import DataSource, load_source
    from actgen.trainer.data import RealImages

    return DataLoader(RealImages(load_source(DataSource()), np.arange(n), transform), batch_size=8)


@pytest.mark.parametrize("crop", ["none", "eval"])
def test_device_normalisation_gives_the_images_the_workers_would(crop):
    """Workers stop at uint8 and the device normalises: the same tensors up to float rounding."""
    from actgen.trainer.transforms import DeviceBatches

    cfg = InputConfig(image_size=12, crop="none", hflip=0.0, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    build = build_eval_transform if crop == "eval" else build_train_transform
    floats = list(_digit_batches(build(cfg)))
    raw = _digit_batches(build(cfg, uint8=True))
    assert next(iter(raw))[0].dtype == torch.uint8            # a quarter of the bytes through the queues
    on_device = list(DeviceBatches(raw, cfg, torch.device("cpu"), training=crop != "eval"))
    assert len(on_device) == len(floats) == 2
    for (a, la), (b, lb) in zip(floats, on_device):
        assert b.dtype == torch.float32 and torch.equal(la, lb)
        assert float((a - b).abs().max()) < 1e-5


def test_device_random_erasing_erases_training_batches_only():
    from actgen.trainer.transforms import DeviceBatches

    cfg = InputConfig(image_size=12, crop="none", hflip=0.0, re_prob=1.0, re_mode="const")
    raw = _digit_batches(build_train_transform(cfg, uint8=True))
    plain = next(iter(DeviceBatches(raw, InputConfig(image_size=12, crop="none", hflip=0.0), torch.device("cpu"),
                                    training=True)))[0]
    torch.manual_seed(0)
    erased = next(iter(DeviceBatches(raw, cfg, torch.device("cpu"), training=True)))[0]
    evaluated = next(iter(DeviceBatches(raw, cfg, torch.device("cpu"), training=False)))[0]
    assert torch.equal(evaluated, plain)
    changed = (erased != plain).flatten(1).any(dim=1)
    assert bool(changed.all())                                   # p = 1: every image of the batch
    assert bool(((erased == 0) | (erased == plain)).all())      # 'const' erases to zero, touches nothing else
    with pytest.raises(TypeError, match="loader.normalize=device expects uint8"):
        next(iter(DeviceBatches(_digit_batches(build_train_transform(cfg)), cfg, torch.device("cpu"), True)))


def test_evaluation_workers_last_one_pass_and_training_workers_persist():
    from actgen.trainer.config import LoaderConfig
    from actgen.trainer.data import build_eval_loader

    cfg = LoaderConfig(num_workers=2)
    data = list(range(10))
    sampler = MixedBatchSampler(num_real=10, num_synthetic=0, batch_size=2, mixing="uniform")
    assert build_train_loader(TrainingSet([data]), sampler, cfg).persistent_workers
    assert not build_eval_loader(data, cfg).persistent_workers
