"""Streaming a sharded dataset to many ranks and DataLoader workers, with shards that may live elsewhere.

`SubjectDataset` is map-style: fine for one process on one disk. At thousands of subjects and several
hosts we want each rank to read only its own shards (one download per shard per host), in a shuffled
but reproducible order, resumable in the middle of an epoch. `StreamingSubjects` does that:

* **Plan, not I/O.** Everything about the order is computed from ``index.json`` alone (subject ids per
  shard and their split), so every process agrees on it without reading a shard, and a resumed run
  skips what was consumed without touching those shards.
* **Shard split.** Per epoch the shards holding any subject of the split are permuted with
  ``default_rng([seed, epoch])`` (the same on every rank); rank ``r`` of ``W`` takes ``perm[r::W]`` and
  DataLoader worker ``w`` of ``n`` takes ``rank_shards[w::n]``. Every shard goes to exactly one worker of
  one rank: no overlap, nothing lost. ``balance=True`` truncates every rank to the smallest rank's
  count (a DDP step needs the same number of batches everywhere); the few subjects dropped differ
  from epoch to epoch.
* **Shuffle buffer.** Within a worker, subjects stream shard by shard through a buffer of
  ``shuffle_buffer`` ids (``default_rng([seed, epoch, rank, worker])``): a bounded-memory shuffle that
  touches a window of about ``shuffle_buffer / shard_size + 1`` shards at a time. Only ids sit in the
  buffer; a record is read (memory-mapped, one subject's bytes) when it is yielded.
* **Order and resume.** With ``num_workers`` workers and ``batch_size`` B, the DataLoader returns the
  workers' batches round-robin, skipping a worker once it is exhausted. `merged_chunks` reproduces
  that sequence from the plan, so ``state_dict(consumed)`` = (epoch, subjects this rank has consumed)
  pins the resume point to the subject: on resume each worker works out how many of its own subjects lie before
  ``consumed`` and skips them (and the streams are rotated so the loader's round-robin, which always
  starts at worker 0, continues where it stopped). Exact at batch boundaries, which is where a
  training loop records ``consumed``; a point inside a batch resumes the same remaining subjects with
  that one worker's batches re-aligned. The order depends on (seed, epoch, rank, world size, workers,
  B, buffer), all stored in the state; resuming with different values is refused, not silently reshuffled.
  ``set_epoch`` must run before each epoch's iterator is created (``persistent_workers=False``, the
  default, so workers see it).

Shards elsewhere (`ShardStore`): the index stays the source of truth (file names, sizes, sha256). Shard
bytes are looked up in the index's own folder, then in ``roots`` in order: local folders (other disks,
NFS mounts) are used in place; ``http(s)://`` roots are downloaded with `requests` into ``cache_dir``
(streamed to a temp file while hashing, refused unless size and sha256 equal the index's, then renamed
into place; bounded retries with back-off; a per-shard file lock so workers on one host download a
shard once). A shard name is only ever used if it matches the index's strict pattern, so nothing from
a remote can name a path. No network is touched unless a URL is given.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from .dataset import (
    _SHARD_RE,
    INDEX_NAME,
    DatasetError,
    DatasetIndex,
    ShardReader,
    SubjectRecord,
    _sha256_file,
)

STATE_FORMAT = "pointillist-stream-state-1"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


class ShardFetchError(DatasetError):
    """A shard could not be found, downloaded or verified in any root; the message names the shard and roots."""


def _is_url(root: str | os.PathLike) -> bool:
    return isinstance(root, str) and root.lower().startswith(("http://", "https://"))


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _SHARD_RE.match(name):
        raise ShardFetchError(f"refusing shard name {name!r}: shard files are named shard-NNNNN.npz")
    return name


def _url_join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


class _FileLock:
    """Exclusive advisory lock on a sibling file (blocking), so one process per host downloads a shard."""

    def __init__(self, path: Path):
        self.path = path
        self.fh = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # Windows: no advisory lock; two downloads of one shard are wasteful, not wrong
            return self
        self.fh = open(self.path, "a+")
        fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self.fh is not None:
            self.fh.close()


# ---------------------------------------------------------------------------------------------- shard store
class ShardStore:
    """Resolve an index entry to a verified local shard file: the index folder, local roots, then URLs.

    ``verify_local`` also checks the sha256 of shards found on local roots (a full read, once per file
    per process); sizes are always checked. Downloads are always hashed. ``session`` lets tests or
    callers pass a configured ``requests.Session``.
    """

    def __init__(self, index_root: str | os.PathLike | None, roots: Sequence[str | os.PathLike] = (), *,
                 cache_dir: str | os.PathLike | None = None, verify_local: bool = False, timeout: float = 60.0,
                 retries: int = 3, backoff: float = 0.5, session=None):
        self.roots: list[str | Path] = []
        if index_root is not None and not _is_url(str(index_root)):
            self.roots.append(Path(index_root))
        for r in roots:
            self.roots.append(str(r) if _is_url(str(r)) else Path(r).expanduser())
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 1:
            raise DatasetError(f"retries must be an integer >= 1, got {retries!r}")
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        if self.cache_dir is None and any(isinstance(r, str) for r in self.roots):
            raise DatasetError("shards from an http(s) root need a cache folder (cache_dir / --shard-cache)")
        self.verify_local = verify_local
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._session = session
        self._verified: set[Path] = set()

    def __getstate__(self) -> dict:  # DataLoader workers make their own HTTP session
        state = dict(self.__dict__)
        state["_session"] = None
        return state

    @property
    def session(self):
        if self._session is None:
            import requests

            self._session = requests.Session()
        return self._session

    def path(self, entry: dict) -> Path:
        """A local file holding exactly the index's bytes for ``entry`` (downloading if needed)."""
        name = _check_name(entry["file"])
        size, sha = int(entry["bytes"]), str(entry["sha256"])
        if not _SHA256.match(sha):
            raise ShardFetchError(f"{name}: the index's sha256 {sha!r} is not a hex digest")
        problems: list[str] = []
        for root in self.roots:
            if isinstance(root, Path):
                found = self._local(root / name, size, sha, problems)
            else:
                found = self._remote(root, name, size, sha, problems)
            if found is not None:
                return found
        where = "; ".join(problems) if problems else "no roots to search"
        raise ShardFetchError(f"shard {name} ({size} bytes, sha256 {sha[:12]}…) not available: {where}")

    def _local(self, path: Path, size: int, sha: str, problems: list[str]) -> Path | None:
        if not path.is_file():
            problems.append(f"{path}: missing")
            return None
        actual = path.stat().st_size
        if actual != size:
            problems.append(f"{path}: {actual} bytes, the index says {size}")
            return None
        if self.verify_local and path not in self._verified:
            if _sha256_file(path) != sha:
                problems.append(f"{path}: sha256 differs from the index")
                return None
            self._verified.add(path)
        return path

    def _remote(self, base: str, name: str, size: int, sha: str, problems: list[str]) -> Path | None:
        assert self.cache_dir is not None
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        target = self.cache_dir / name
        url = _url_join(base, name)
        with _FileLock(self.cache_dir / f".{name}.lock"):
            if target.is_file() and target.stat().st_size == size:
                if target in self._verified or _sha256_file(target) == sha:  # another process may have fetched it
                    self._verified.add(target)
                    return target
                target.unlink(missing_ok=True)  # a stale or damaged cache copy
            last = ""
            for attempt in range(self.retries):
                if attempt:
                    time.sleep(self.backoff * 2 ** (attempt - 1))
                try:
                    self._download(url, target, size, sha)
                    self._verified.add(target)
                    return target
                except _NotThere as exc:
                    problems.append(f"{url}: {exc}")
                    return None
                except _Transient as exc:
                    last = str(exc)
            problems.append(f"{url}: {last} (after {self.retries} attempt(s))")
            return None

    def _download(self, url: str, target: Path, size: int, sha: str) -> None:
        import requests

        try:
            with self.session.get(url, stream=True, timeout=self.timeout, allow_redirects=False) as resp:
                if resp.status_code in (404, 410):
                    raise _NotThere(f"HTTP {resp.status_code}")
                if resp.status_code != 200:
                    raise _Transient(f"HTTP {resp.status_code}")
                h = hashlib.sha256()
                n = 0
                fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
                try:
                    with os.fdopen(fd, "wb") as fh:
                        for block in resp.iter_content(_CHUNK):
                            n += len(block)
                            if n > size:
                                raise _Transient(f"more than the index's {size} bytes (sha256 mismatch: refused)")
                            h.update(block)
                            fh.write(block)
                        fh.flush()
                        os.fsync(fh.fileno())
                    if n != size:
                        raise _Transient(f"got {n} bytes, the index says {size} (refused)")
                    if h.hexdigest() != sha:
                        raise _Transient(f"sha256 mismatch: got {h.hexdigest()[:12]}…, the index says {sha[:12]}… (refused)")
                    os.replace(tmp, target)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
        except requests.RequestException as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from None


class _NotThere(Exception):
    """The root answered that it does not have the shard (try the next root, no retry)."""


class _Transient(Exception):
    """Network trouble or bad bytes: retried, then reported."""


def fetch_index(url: str, cache_dir: str | os.PathLike, timeout: float = 60.0) -> Path:
    """Download ``URL/index.json`` into ``cache_dir`` (atomically) and return the folder, for `DatasetIndex.load`.

    The index carries no hash of itself; it is parsed and validated like a local one (strict shard names).
    """
    import requests

    from ..atomic import atomic_write

    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    src = _url_join(url, INDEX_NAME)
    try:
        resp = requests.get(src, timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        raise ShardFetchError(f"{src}: {type(exc).__name__}: {exc}") from None
    if resp.status_code != 200:
        raise ShardFetchError(f"{src}: HTTP {resp.status_code}")
    atomic_write(cache / INDEX_NAME, lambda fh: fh.write(resp.content))
    DatasetIndex.load(cache)  # refuse a malformed index now, with its name
    return cache


# ---------------------------------------------------------------------------------------------- ordering
def shuffle_buffer_order(ids: Sequence[int], buffer: int, rng: np.random.Generator | None) -> list[int]:
    """Bounded-buffer shuffle of a stream: fill ``buffer`` slots; each new item evicts a random slot.

    ``rng=None`` or ``buffer <= 1`` keeps the order. Only ``buffer`` ids are held back at any time, so
    the items being yielded come from a window of the input stream (a few shards), never the whole of it.
    """
    if rng is None or buffer <= 1:
        return list(ids)
    out: list[int] = []
    slots: list[int] = []
    for sid in ids:
        if len(slots) < buffer:
            slots.append(sid)
            continue
        j = int(rng.integers(len(slots)))
        out.append(slots[j])
        slots[j] = sid
    order = rng.permutation(len(slots)) if slots else []
    out.extend(slots[int(j)] for j in order)
    return out


def merged_chunks(lengths: Sequence[int], batch_size: int) -> list[tuple[int, int, int]]:
    """(worker, start, stop) batches of the workers' streams in the order a DataLoader returns them.

    Workers produce batches of ``batch_size`` from streams of ``lengths`` (the last may be short); the
    DataLoader takes one batch from each worker in turn and skips a worker once it is exhausted.
    """
    out: list[tuple[int, int, int]] = []
    pos = [0] * len(lengths)
    active = [w for w in range(len(lengths)) if lengths[w]]
    while active:
        still = []
        for w in active:
            stop = min(pos[w] + batch_size, lengths[w])
            out.append((w, pos[w], stop))
            pos[w] = stop
            if stop < lengths[w]:
                still.append(w)
        active = still
    return out


def _num_chunks(lengths: Sequence[int], batch_size: int) -> int:
    return sum(-(-n // batch_size) for n in lengths)


# ---------------------------------------------------------------------------------------------- dataset
def collate_records(batch: list) -> list:
    """DataLoader ``collate_fn`` that keeps the records as a list (they are numpy dataclasses of varying size)."""
    return list(batch)


class StreamingSubjects(IterableDataset):
    """An `IterableDataset` of `SubjectRecord`s of one split, sharded over ranks and workers (module doc).

    ``index``: a dataset folder or an ``http(s)://`` URL of one (its index.json is fetched into
    ``cache_dir``). ``rank`` / ``world_size`` default to torch.distributed's when it is initialised,
    else 0 / 1. ``num_workers`` and ``batch_size`` must equal the DataLoader's: they define the order
    the loader returns (and so what ``consumed`` means); a mismatch in the worker count is refused when
    iterating. ``transform`` runs on each record in the worker. ``prefetch`` shards ahead of the one being
    read are fetched in a background thread (what hides download time for http roots; 0 turns it off).
    """

    def __init__(self, index: str | os.PathLike, split: str = "train", *, roots: Sequence[str | os.PathLike] = (),
                 cache_dir: str | os.PathLike | None = None, seed: int = 0, shuffle: bool = True, shuffle_buffer: int = 256,
                 rank: int | None = None, world_size: int | None = None, num_workers: int = 0, batch_size: int = 1,
                 balance: bool = False, verify_local: bool = False, prefetch: int = 1,
                 transform: Callable[[SubjectRecord], object] | None = None, timeout: float = 60.0, retries: int = 3,
                 session=None):
        super().__init__()
        for name, value, lo in (("shuffle_buffer", shuffle_buffer, 1), ("batch_size", batch_size, 1), ("seed", seed, 0),
                                ("num_workers", num_workers, 0), ("prefetch", prefetch, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise DatasetError(f"{name} must be an integer >= {lo}, got {value!r}")
        if _is_url(str(index)):
            if cache_dir is None:
                raise DatasetError("a dataset URL needs a cache folder (cache_dir / --shard-cache)")
            roots = [str(index), *roots]
            self.index = DatasetIndex.load(fetch_index(str(index), cache_dir, timeout))
            local_root = None
        else:
            self.index = DatasetIndex.load(index)
            local_root = self.index.root
        self.split = split
        ids = set(self.index.subject_ids(split))
        if rank is None or world_size is None:
            d_rank, d_world = _dist_rank_world()
            rank = d_rank if rank is None else rank
            world_size = d_world if world_size is None else world_size
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise DatasetError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        # shards in index order, each with the ids of this split it holds (in index order)
        self.shards: list[tuple[dict, list[int]]] = []
        for entry in sorted(self.index.shards, key=lambda s: s["file"]):
            _check_name(entry["file"])
            mine = [sid for sid in entry["subject_ids"] if sid in ids]
            if mine:
                self.shards.append((entry, mine))
        if self.shards and len(self.shards) < world_size:
            # a rank without a shard yields nothing: DDP would hang on it, or with balance every rank trains on nothing
            raise DatasetError(f"split {split!r} of {self.index.root} is in {len(self.shards)} shard(s), fewer than the "
                               f"{world_size} ranks (shards are split between ranks whole); rebuild the dataset with a "
                               "smaller --shard-size or use fewer ranks")
        self.seed, self.shuffle, self.shuffle_buffer = seed, shuffle, shuffle_buffer
        self.rank, self.world_size, self.balance = rank, world_size, balance
        self.num_workers, self.batch_size = num_workers, batch_size
        self.transform = transform
        self.prefetch = prefetch
        self.store = ShardStore(local_root, roots, cache_dir=cache_dir, verify_local=verify_local, timeout=timeout,
                                retries=retries, session=session)
        self.epoch = 0
        self.consumed = 0

    @property
    def _streams(self) -> int:
        return max(1, self.num_workers)

    # ------------------------------------------------------------------ plan (index only)
    def rank_shards(self, epoch: int, rank: int | None = None) -> list[int]:
        """Positions in ``self.shards`` that rank ``rank`` reads in ``epoch``, in reading order."""
        rank = self.rank if rank is None else rank
        n = len(self.shards)
        perm = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        return [int(k) for k in perm[rank::self.world_size]]

    def _worker_shards(self, epoch: int, worker: int, rank: int) -> list[int]:
        return self.rank_shards(epoch, rank)[worker::self._streams]

    def worker_stream(self, epoch: int, worker: int, rank: int | None = None) -> list[int]:
        """Subject ids worker ``worker`` of ``rank`` streams in ``epoch`` (before balance and resume)."""
        rank = self.rank if rank is None else rank
        ids = [sid for k in self._worker_shards(epoch, worker, rank) for sid in self.shards[k][1]]
        rng = np.random.default_rng([self.seed, epoch, rank, worker]) if self.shuffle else None
        return shuffle_buffer_order(ids, self.shuffle_buffer, rng)

    def _lengths(self, epoch: int, rank: int) -> list[int]:
        return [sum(len(self.shards[k][1]) for k in self._worker_shards(epoch, w, rank)) for w in range(self._streams)]

    def _chunks(self, epoch: int, rank: int) -> list[tuple[int, int, int]]:
        """This rank's loader batches in ``epoch``; with ``balance``, cut to the fewest batches any rank has."""
        chunks = merged_chunks(self._lengths(epoch, rank), self.batch_size)
        if self.balance:
            chunks = chunks[: min(_num_chunks(self._lengths(epoch, r), self.batch_size) for r in range(self.world_size))]
        return chunks

    def batches_per_epoch(self, epoch: int | None = None) -> int:
        """Batches this rank's loader returns in a whole ``epoch`` (the same on every rank with ``balance``)."""
        return len(self._chunks(self.epoch if epoch is None else epoch, self.rank))

    def epoch_size(self, epoch: int | None = None, rank: int | None = None) -> int:
        """Subjects rank ``rank`` returns in a whole ``epoch``."""
        chunks = self._chunks(self.epoch if epoch is None else epoch, self.rank if rank is None else rank)
        return sum(stop - start for _, start, stop in chunks)

    def order(self, epoch: int, rank: int | None = None) -> list[int]:
        """Subject ids rank ``rank``'s DataLoader returns in a whole ``epoch``, in order."""
        rank = self.rank if rank is None else rank
        streams = [self.worker_stream(epoch, w, rank) for w in range(self._streams)]
        return [sid for w, start, stop in self._chunks(epoch, rank) for sid in streams[w][start:stop]]

    def __len__(self) -> int:
        """Subjects this rank still yields in the current epoch (after the resume point)."""
        return max(0, self.epoch_size() - self.consumed)

    # ------------------------------------------------------------------ epochs and resume
    def set_epoch(self, epoch: int, consumed: int = 0) -> None:
        """The next iterator yields ``epoch``, skipping the first ``consumed`` subjects this rank's loader returns."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise DatasetError(f"epoch must be an integer >= 0, got {epoch!r}")
        if isinstance(consumed, bool) or not isinstance(consumed, int) or consumed < 0:
            raise DatasetError(f"consumed must be an integer >= 0, got {consumed!r}")
        self.epoch, self.consumed = epoch, consumed

    _ORDER_KEYS = ("seed", "split", "rank", "world_size", "num_workers", "batch_size", "shuffle", "shuffle_buffer", "balance")

    def state_dict(self, consumed: int) -> dict:
        """JSON-able resume state once this rank's loader has returned ``consumed`` subjects of the current epoch."""
        state = {"format": STATE_FORMAT, "epoch": self.epoch, "consumed": int(consumed)}
        state.update({k: getattr(self, k) for k in self._ORDER_KEYS})
        return state

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict`; refuses a state whose order-defining settings differ (names them)."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise DatasetError(f"not a streaming resume state (format {STATE_FORMAT!r} expected)")
        diffs = [f"{k} ({state.get(k)!r} in the state, {getattr(self, k)!r} now)" for k in self._ORDER_KEYS
                 if state.get(k) != getattr(self, k)]
        if diffs:
            raise DatasetError("cannot resume the stream exactly, settings differ: " + "; ".join(diffs))
        self.set_epoch(int(state["epoch"]), int(state["consumed"]))

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator:
        info = get_worker_info()
        worker, workers = (0, 0) if info is None else (info.id, info.num_workers)
        if workers != self.num_workers:
            raise DatasetError(f"StreamingSubjects was made for num_workers={self.num_workers} but the DataLoader "
                               f"has num_workers={workers}; pass the same number to both")
        streams = self._streams
        chunks = self._chunks(self.epoch, self.rank)
        # Skip what the loader already returned. The loader starts its round-robin at worker 0, so the
        # streams are rotated to make physical worker 0 the one whose batch comes next.
        skip, first = self.consumed, None
        starts = [None] * streams
        ends = [0] * streams
        for c, (w, start, stop) in enumerate(chunks):
            n = stop - start
            take_from = start + min(n, skip)
            skip = max(0, skip - n)
            if take_from < stop:
                if first is None:
                    first = w
                if starts[w] is None:
                    starts[w] = take_from
            ends[w] = stop
        stream = worker if first is None else (worker + first) % streams
        lo = starts[stream]
        ids = [] if lo is None else self.worker_stream(self.epoch, stream)[lo:ends[stream]]
        return self._records(ids)

    def _records(self, ids: list[int]) -> Iterator:
        """Read ``ids`` in order; the next ``prefetch`` shards are fetched in a background thread meanwhile."""
        from concurrent.futures import Future, ThreadPoolExecutor

        shard_of = {sid: k for k, (_, sids) in enumerate(self.shards) for sid in sids}
        remaining: dict[int, int] = {}
        for sid in ids:
            remaining[shard_of[sid]] = remaining.get(shard_of[sid], 0) + 1
        sequence = list(remaining)  # shards in order of first use (dicts keep insertion order)
        position = {k: i for i, k in enumerate(sequence)}
        readers: dict[int, ShardReader] = {}
        fetches: dict[int, Future] = {}
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-prefetch") if self.prefetch else None

        def path_of(k: int) -> Path:
            if k in fetches:
                return fetches.pop(k).result()
            return self.store.path(self.shards[k][0])

        try:
            for sid in ids:
                k = shard_of[sid]
                if k not in readers:
                    entry = self.shards[k][0]
                    readers[k] = ShardReader(path_of(k), entry)
                    if pool is not None:
                        for nxt in sequence[position[k] + 1: position[k] + 1 + self.prefetch]:
                            if nxt not in fetches and nxt not in readers:
                                fetches[nxt] = pool.submit(self.store.path, self.shards[nxt][0])
                record = readers[k].get(sid)
                remaining[k] -= 1
                if remaining[k] == 0:
                    del readers[k]  # the last subject of this shard in our stream: drop its maps
                yield self.transform(record) if self.transform else record
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)


def _dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
