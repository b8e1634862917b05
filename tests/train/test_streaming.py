"""Streaming dataset: rank / worker split, shuffle determinism, resume, DataLoader order, shards on other roots and http."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pointillist.train.dataset import (
    DatasetConfig,
    DatasetError,
    DatasetIndex,
    SubjectRecord,
    build_dataset,
    load_subject,
    subject_split,
    write_shard,
)
from pointillist.train.streaming import (
    ShardFetchError,
    ShardStore,
    StreamingSubjects,
    collate_records,
    merged_chunks,
    shuffle_buffer_order,
)
from torch.utils.data import DataLoader

# ------------------------------------------------------------------------------------------- fixtures
FAKE = DatasetConfig(subjects=31, views=1, image_size=4, shard_size=3, heldout_every=5)


def _fake_record(config: DatasetConfig, sid: int) -> SubjectRecord:
    """A tiny record whose arrays carry its id, so a mix-up would show."""
    n, p, v, s = 2 + sid % 3, 1, config.views, config.image_size
    f = np.float32(sid)
    return SubjectRecord(
        subject_id=sid, split=subject_split(config, sid), style="short", beard=False, shape=np.full(3, f, np.float32),
        means=np.full((n, 3), f, np.float32), log_scales=np.zeros((n, 3), np.float32), quats=np.tile(np.float32([1, 0, 0, 0]), (n, 1)),
        opacity_logits=np.zeros(n, np.float32), sh_dc=np.zeros((n, 3), np.float32), binding=np.zeros(n, np.int32),
        ar_points=np.full((p, 3), f, np.float32), ar_binding=np.zeros(p, np.int32),
        images=np.full((v, s, s, 3), sid % 256, np.uint8), masks=np.zeros((v, s, s), np.uint8),
        viewmats=np.tile(np.eye(4, dtype=np.float32), (v, 1, 1)), Ks=np.tile(np.eye(3, dtype=np.float32), (v, 1, 1)),
        view_yaw_pitch=np.zeros((v, 2), np.float32))


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> Path:
    """31 subjects in 11 shards (the last holds one), written with the real shard writer and index."""
    root = tmp_path_factory.mktemp("fake")
    index = DatasetIndex(root, FAKE.validate(), head_model_id="test")
    for k in range(FAKE.num_shards):
        records = [_fake_record(FAKE, sid) for sid in FAKE.shard_subject_ids(k)]
        index.shards.append(write_shard(root / f"shard-{k:05d}.npz", records))
        index.subjects.update({r.subject_id: {key: r.meta()[key] for key in ("split", "style", "beard", "num_gaussians", "num_ar_points")}
                               for r in records})
    index.save()
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A real built dataset: 6 subjects, 3 shards of 2, 32² views."""
    root = tmp_path_factory.mktemp("tiny") / "data"
    build_dataset(root, DatasetConfig(subjects=6, views=2, image_size=32, shard_size=2, density=0.3, heldout_every=3))
    return root


def _train_ids(root: Path) -> list[int]:
    return DatasetIndex.load(root).subject_ids("train")


# ------------------------------------------------------------------------------------------- planning
def test_merged_chunks_round_robin_skips_exhausted_workers():
    assert merged_chunks([5, 2, 0, 9], 2) == [(0, 0, 2), (1, 0, 2), (3, 0, 2), (0, 2, 4), (3, 2, 4), (0, 4, 5), (3, 4, 6), (3, 6, 8), (3, 8, 9)]


def test_shuffle_buffer_is_a_bounded_permutation():
    ids = list(range(100))
    out = shuffle_buffer_order(ids, 8, np.random.default_rng(0))
    assert sorted(out) == ids and out != ids
    # with a buffer of 8, the k-th item out has entered the buffer: it is one of the first k + 8 inputs
    assert all(v < k + 8 for k, v in enumerate(out))
    assert shuffle_buffer_order(ids, 8, None) == ids
    assert shuffle_buffer_order(ids, 8, np.random.default_rng(0)) == out


@pytest.mark.parametrize("world,workers,batch", [(1, 0, 1), (2, 2, 2), (3, 2, 4), (4, 3, 1)])
def test_ranks_and_workers_cover_the_split_exactly_once(fake, world, workers, batch):
    train = _train_ids(fake)
    for epoch in (0, 1):
        seen = []
        for rank in range(world):
            ds = StreamingSubjects(fake, "train", rank=rank, world_size=world, num_workers=workers, batch_size=batch,
                                   shuffle_buffer=4, seed=7)
            order = ds.order(epoch)
            assert len(order) == ds.epoch_size(epoch)
            seen += order
        assert sorted(seen) == train, (epoch, Counter(seen).most_common(2))
    heldout = StreamingSubjects(fake, "heldout", num_workers=0)
    assert sorted(heldout.order(0)) == DatasetIndex.load(fake).subject_ids("heldout") == [4, 9, 14, 19, 24, 29]


def test_ranks_read_disjoint_shards_and_order_is_seeded(fake):
    a, b = (StreamingSubjects(fake, rank=r, world_size=2, seed=3) for r in (0, 1))
    assert not set(a.rank_shards(0)) & set(b.rank_shards(0))
    assert sorted(a.rank_shards(0) + b.rank_shards(0)) == list(range(len(a.shards)))
    assert a.rank_shards(0) != a.rank_shards(1)  # a new shard order per epoch
    again = StreamingSubjects(fake, rank=0, world_size=2, seed=3)
    assert again.order(5) == a.order(5)
    other = StreamingSubjects(fake, rank=0, world_size=2, seed=4)
    assert other.order(0) != a.order(0)
    plain = StreamingSubjects(fake, shuffle=False)
    assert plain.order(0) == _train_ids(fake)


def test_balance_gives_every_rank_the_same_number_of_batches(fake):
    world, batch = 3, 2
    ranks = [StreamingSubjects(fake, rank=r, world_size=world, num_workers=2, batch_size=batch, balance=True, seed=1)
             for r in range(world)]
    for epoch in range(3):
        counts = {ds.batches_per_epoch(epoch) for ds in ranks}
        assert len(counts) == 1
        orders = [ds.order(epoch) for ds in ranks]
        flat = [sid for o in orders for sid in o]
        assert len(flat) == len(set(flat))  # truncating drops, never duplicates
    unbalanced = [StreamingSubjects(fake, rank=r, world_size=world, num_workers=2, batch_size=batch, seed=1) for r in range(world)]
    assert len({ds.batches_per_epoch(0) for ds in unbalanced}) > 1  # the case balance exists for


def test_state_refuses_different_settings(fake):
    ds = StreamingSubjects(fake, num_workers=2, batch_size=2)
    ds.set_epoch(1)
    state = ds.state_dict(4)
    other = StreamingSubjects(fake, num_workers=2, batch_size=3)
    with pytest.raises(DatasetError, match=r"batch_size \(2 in the state, 3 now\)"):
        other.load_state_dict(state)
    with pytest.raises(DatasetError, match="rank"):
        StreamingSubjects(fake, rank=2, world_size=2)


# ------------------------------------------------------------------------------------------- reading through a DataLoader
def _ids_from_loader(ds: StreamingSubjects, workers: int, batch: int) -> list[int]:
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate_records)
    out = []
    for records in loader:
        assert all(isinstance(r, SubjectRecord) for r in records)
        for r in records:
            assert r.means[0, 0] == r.subject_id and r.images[0, 0, 0, 0] == r.subject_id % 256  # the right bytes
        out += [r.subject_id for r in records]
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_returns_the_planned_order_and_resumes_mid_epoch(fake, workers):
    batch = 2
    ds = StreamingSubjects(fake, rank=1, world_size=2, num_workers=workers, batch_size=batch, shuffle_buffer=3, seed=11)
    ds.set_epoch(2)
    full = _ids_from_loader(ds, workers, batch)
    assert full == ds.order(2) and len(full) == ds.epoch_size(2) == len(ds)
    # stop after 3 batches, save, resume in a fresh dataset: the rest comes exactly in order
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate_records)
    consumed = 0
    for k, records in enumerate(loader):
        consumed += len(records)
        if k == 2:
            break
    state = ds.state_dict(consumed)
    resumed = StreamingSubjects(fake, rank=1, world_size=2, num_workers=workers, batch_size=batch, shuffle_buffer=3, seed=11)
    resumed.load_state_dict(state)
    assert len(resumed) == len(full) - consumed
    assert _ids_from_loader(resumed, workers, batch) == full[consumed:]


def test_worker_count_must_match_the_loader(fake):
    ds = StreamingSubjects(fake, num_workers=2)
    with pytest.raises(DatasetError, match="num_workers=2 but the DataLoader has num_workers=0"):
        next(iter(DataLoader(ds, batch_size=1, num_workers=0, collate_fn=collate_records)))


# ------------------------------------------------------------------------------------------- shards elsewhere
def test_local_roots_are_searched_in_order(tiny, tmp_path):
    index_dir, disk_a, disk_b = tmp_path / "index", tmp_path / "a", tmp_path / "b"
    for d in (index_dir, disk_a, disk_b):
        d.mkdir()
    shutil.copy(tiny / "index.json", index_dir)
    names = sorted(p.name for p in tiny.glob("shard-*.npz"))
    shutil.copy(tiny / names[0], disk_a)
    for n in names[1:]:
        shutil.copy(tiny / n, disk_b)
    (disk_a / names[1]).write_bytes(b"stale")  # wrong size on the first root: skipped, the next root used
    ds = StreamingSubjects(index_dir, "all", roots=[disk_a, disk_b], shuffle=False)
    records = list(ds)
    assert [r.subject_id for r in records] == list(range(6))
    direct = load_subject(tiny, 3)
    assert np.array_equal(records[3].images, direct.images) and np.array_equal(records[3].means, direct.means)
    missing = StreamingSubjects(index_dir, "all", roots=[disk_a], shuffle=False)
    with pytest.raises(ShardFetchError, match=rf"{names[1]}.*{disk_a / names[1]}: 5 bytes, the index says"):
        list(missing)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture()
def http_root(tmp_path):
    """A real HTTP server on loopback serving a folder; yields (folder, url)."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}/data"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_http_shards_are_downloaded_verified_and_cached(tiny, http_root, tmp_path):
    served, url = http_root
    shutil.copytree(tiny, served / "data", ignore=shutil.ignore_patterns(".*"))
    cache = tmp_path / "cache"
    ds = StreamingSubjects(url, "all", cache_dir=cache, shuffle=False, retries=2)
    records = list(ds)
    assert [r.subject_id for r in records] == list(range(6))
    for name in ("shard-00000.npz", "shard-00001.npz", "shard-00002.npz"):
        assert hashlib.sha256((cache / name).read_bytes()).hexdigest() == hashlib.sha256((tiny / name).read_bytes()).hexdigest()
    assert not list(cache.glob("*.tmp"))
    assert np.array_equal(records[5].images, load_subject(tiny, 5).images)
    # the cache is used: with the server's files gone the shards still read
    shutil.rmtree(served / "data")
    assert [r.subject_id for r in StreamingSubjects(cache, "all", roots=[url], cache_dir=cache, shuffle=False)] == list(range(6))


def test_http_corrupt_shard_is_refused_with_its_name(tiny, http_root, tmp_path):
    served, url = http_root
    shutil.copytree(tiny, served / "data", ignore=shutil.ignore_patterns(".*"))
    bad = served / "data" / "shard-00001.npz"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    bad.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    store = ShardStore(None, [url], cache_dir=cache, retries=2, backoff=0.0)
    index = DatasetIndex.load(tiny)
    assert store.path(index.shards[0]) == cache / "shard-00000.npz"
    with pytest.raises(ShardFetchError, match=r"shard shard-00001\.npz .*sha256 mismatch.*refused.*after 2 attempt"):
        store.path(index.shards[1])
    assert not (cache / "shard-00001.npz").exists() and not list(cache.glob("*.tmp"))
    # a second root with good bytes is tried after the bad one
    good = tmp_path / "good"
    good.mkdir()
    shutil.copy(tiny / "shard-00001.npz", good)
    assert ShardStore(None, [url, good], cache_dir=cache, retries=1).path(index.shards[1]) == good / "shard-00001.npz"
    # a damaged copy of the right size in the cache is not trusted: it is fetched again (and refused again here)
    (cache / "shard-00001.npz").write_bytes(bytes(data))
    with pytest.raises(ShardFetchError, match="sha256 mismatch"):
        store.path(index.shards[1])


def test_names_that_are_not_shard_names_are_refused(tmp_path):
    store = ShardStore(tmp_path, [])
    for name in ("../index.json", "shard-1.npz", "/etc/passwd", "shard-00000.npz/../x"):
        with pytest.raises(ShardFetchError, match="refusing shard name"):
            store.path({"file": name, "bytes": 1, "sha256": "0" * 64})
    with pytest.raises(DatasetError, match="cache folder"):
        ShardStore(tmp_path, ["http://127.0.0.1:1/x"])


def test_unreachable_host_fails_after_bounded_retries(tiny, tmp_path):
    store = ShardStore(None, ["http://127.0.0.1:9/none"], cache_dir=tmp_path / "c", retries=2, backoff=0.0, timeout=2)
    with pytest.raises(ShardFetchError, match=r"shard-00000\.npz.*ConnectionError.*after 2 attempt"):
        store.path(DatasetIndex.load(tiny).shards[0])


def test_the_next_shard_is_fetched_in_the_background(fake):
    ds = StreamingSubjects(fake, shuffle=False, prefetch=1)
    calls = []
    inner = ds.store.path

    def logged(entry):
        calls.append((entry["file"], threading.current_thread().name.startswith("shard-prefetch")))
        return inner(entry)

    ds.store.path = logged
    it = iter(ds)
    first = next(it)
    assert first.subject_id == 0
    for _ in range(100):  # the prefetch thread runs concurrently; give it a moment
        if len(calls) == 2:
            break
        threading.Event().wait(0.01)
    assert calls == [("shard-00000.npz", False), ("shard-00001.npz", True)]
    assert [r.subject_id for r in it] == [sid for sid in _train_ids(fake) if sid != 0]
    assert sum(1 for name, _ in calls if name == "shard-00001.npz") == 1  # fetched once, then used


def test_fewer_shards_than_ranks_is_refused(fake):
    """A rank without a shard would yield nothing: with balance every rank would then train on nothing."""
    shards = len(StreamingSubjects(fake).shards)
    StreamingSubjects(fake, rank=shards - 1, world_size=shards, balance=True)  # one shard each is fine
    for balance in (True, False):
        with pytest.raises(DatasetError, match=rf"{shards} shard\(s\), fewer than the {shards + 1} ranks.*--shard-size"):
            StreamingSubjects(fake, rank=0, world_size=shards + 1, balance=balance)


def _round_robin(ds: StreamingSubjects, monkeypatch) -> list[list[int]]:
    """What a DataLoader(num_workers=ds.num_workers, batch_size=ds.batch_size) returns, built in-process: each
    worker's stream batched, then one batch per worker in turn, exhausted workers skipped (checked against a
    real DataLoader in the test above)."""
    import types

    from pointillist.train import streaming

    n, batch = ds.num_workers, ds.batch_size
    streams = []
    for w in range(n):
        monkeypatch.setattr(streaming, "get_worker_info", lambda w=w: types.SimpleNamespace(id=w, num_workers=n))
        ids = [r.subject_id for r in ds]
        streams.append([ids[i:i + batch] for i in range(0, len(ids), batch)])
    out = []
    for k in range(max(map(len, streams))):
        out += [s[k] for s in streams if k < len(s)]
    return out


@pytest.mark.parametrize("world,workers,batch", [(2, 3, 2), (3, 2, 1), (1, 3, 4)])
def test_resume_at_every_batch_boundary_with_balance(fake, monkeypatch, world, workers, batch):
    kw = {"world_size": world, "num_workers": workers, "batch_size": batch, "balance": True, "shuffle_buffer": 3, "seed": 5}
    for rank in range(world):
        ds = StreamingSubjects(fake, rank=rank, **kw)
        ds.set_epoch(1)
        full = _round_robin(ds, monkeypatch)
        assert [sid for b in full for sid in b] == ds.order(1) and len(full) == ds.batches_per_epoch(1)
        consumed = 0
        for k in range(len(full) + 1):
            resumed = StreamingSubjects(fake, rank=rank, **kw)
            resumed.load_state_dict(ds.state_dict(consumed))
            assert _round_robin(resumed, monkeypatch) == full[k:], (rank, k)
            consumed += len(full[k]) if k < len(full) else 0
