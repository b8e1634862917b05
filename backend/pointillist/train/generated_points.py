"""The generator's own point sequences for training subjects, so the decoder trains on what it will decode.

Teacher forcing shows the Gaussian decoder only true points, but `create` hands it sampled ones, whose
errors (a face a little narrow, extra points on a bald crown, a missing ear) it never saw during training.
`build_generated_points` samples training subjects once, exactly as `create` does (silhouette carving,
greedy first point, the default temperature and nucleus), and stores what the transformer wrote; the
decoder stage then decodes those sequences for a fraction of its samples (`TrainConfig.generated_points`)
and learns, against the subject's true views and Gaussians, to move and fade what the sampler got wrong.

File format: one ``.npz`` (no pickled objects) with, per subject id ``S``, ``written_S`` (the START ... END
token sequence, refused points included: a teacher-forced pass over it reproduces the context `create`'s
hidden states came from, exactly within one attention window and with training's overlapping windows beyond) and ``kept_S`` (bool per written point), plus ``meta`` (JSON: checkpoint,
sampling options). Written atomically every few subjects; an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write
from ..head.model import HeadModel
from ..model.checkpoint import load_generator
from ..model.point_encoder import SurfaceSampler
from ..model.portrait_probe import PortraitView
from ..model.sampling import SamplingOptions, generate_batch
from ..model.silhouette import SilhouetteCarver
from ..model.tokenizer import TOKENS_PER_POINT


@dataclass(frozen=True)
class GeneratedSequence:
    written: np.ndarray  # (1 + 4W + 1,) int64
    kept: np.ndarray  # (W,) bool

    def kept_tokens(self) -> np.ndarray:
        """The sequence `create` decodes: the kept points only (a subsequence of a sorted one stays sorted)."""
        body = self.written[1:-1].reshape(-1, TOKENS_PER_POINT)[self.kept]
        return np.concatenate([self.written[:1], body.reshape(-1), self.written[-1:]])


def save_generated(path: str | Path, sequences: dict[int, GeneratedSequence], meta: dict) -> None:
    """Write atomically (a reader never sees half a file; an interrupted build keeps the last one)."""
    arrays = {"meta": np.array(json.dumps(meta))}
    for sid, seq in sequences.items():
        arrays[f"written_{sid}"] = seq.written.astype(np.int64)
        arrays[f"kept_{sid}"] = seq.kept.astype(bool)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: np.savez(fh, **arrays))


def load_generated(path: str | Path) -> tuple[dict[int, GeneratedSequence], dict]:
    """Sequences by subject id and the build's meta; never unpickles."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            out = {}
            for key in data.files:
                if key.startswith("written_"):
                    sid = int(key[len("written_"):])
                    out[sid] = GeneratedSequence(data[key], data[f"kept_{sid}"])
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: not a generated-points file ({exc})") from None
    for sid, seq in out.items():
        if (len(seq.written) - 2) % TOKENS_PER_POINT or len(seq.kept) != (len(seq.written) - 2) // TOKENS_PER_POINT:
            raise ValueError(f"{path}: subject {sid}'s sequence and keep mask disagree")
    return out, meta


def build_generated_points(checkpoint: str, data: str, output: str, subjects: int, part: tuple[int, int] = (0, 1),
                           seed: int = 0, max_points: int = 2048, batch: int = 8, save_every: int = 8,
                           log: Callable[[str], None] = print) -> dict:
    """Sample `subjects` training subjects (balanced across hair styles; of them, every `part[1]`-th from
    `part[0]`, so several processes can share the work) into `output`, `batch` subjects per transformer
    step (`generate_batch`: ≈ 1.2x the subjects per second on a CPU); resumes from an
    existing file made with the same checkpoint. Returns the meta written."""
    from .dataset import DatasetIndex, ShardReader
    from .evaluate import select_subjects
    from .train_generator import conditioning_inputs

    first, parts = part
    if not 0 <= first < parts:
        raise ValueError(f"part must be I/N with 0 <= I < N, got {first}/{parts}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    model, info = load_generator(checkpoint)
    model.eval()
    head = HeadModel.load()
    index = DatasetIndex.load(data)
    ids = select_subjects(index, "train", subjects, seed)[first::parts]
    options = SamplingOptions(max_points=max_points)  # 2048: the standard preset's budget, as `eval` uses
    meta = {"checkpoint": str(checkpoint), "checkpoint_name": info.get("name"), "sampling": asdict(options),
            "carve": True, "seed": seed}
    done: dict[int, GeneratedSequence] = {}
    if Path(output).exists():
        done, old = load_generated(output)
        if old.get("checkpoint") != meta["checkpoint"]:
            raise ValueError(f"{output} was built from {old.get('checkpoint')}, not {checkpoint}: choose another -o")
    sampler = SurfaceSampler(head.data, model.config.points.num_points, seed=0)
    started = time.perf_counter()
    todo = [sid for sid in ids if sid not in done]
    log(f"{len(ids) - len(todo)} of {len(ids)} subjects already sampled")
    since_save = 0
    for first_n in range(0, len(todo), batch):
        chunk = todo[first_n:first_n + batch]
        records = []
        for sid in chunk:
            shard = index.shard_for(sid)
            records.append(ShardReader(index.root / shard["file"], shard).get(sid))
        with torch.no_grad():
            images, points, probe = conditioning_inputs(model, head, sampler, records)
            cond = model.condition(images, points, head_probe=probe)
            gens = generate_batch(model.ar, model.tokenizer, cond, [replace(options, seed=seed + sid) for sid in chunk],
                                  [SilhouetteCarver(PortraitView.from_record(r), head) for r in records])
        for n, (sid, record, gen) in enumerate(zip(chunk, records, gens), start=first_n + 1):
            done[sid] = GeneratedSequence(gen.written, gen.kept)
            log(f"[{n}/{len(todo)}] subject {sid} ({record.style}): {int(gen.kept.sum())} points kept of "
                f"{len(gen.kept)} written, {record.num_ar_points} true, {gen.seconds:.1f} s")
        since_save += len(chunk)
        if since_save >= save_every or first_n + len(chunk) == len(todo):
            save_generated(output, done, meta)
            since_save = 0
    if not todo:
        save_generated(output, done, meta)
    log(f"{len(done)} subjects in {output} ({time.perf_counter() - started:.0f} s)")
    return meta
