"""Data-parallel training on PyTorch's own engine: `torchrun` sets the environment, we read it.

`pointillist train ...` runs unchanged under `torchrun --nproc-per-node K [--nnodes N --rdzv-endpoint
HOST:PORT]` (or `torchrun -m pointillist.cli train ...`): `DistContext.from_env` joins the process group
(NCCL on CUDA, gloo on CPU) when torchrun's variables are present and is a one-process context otherwise.

Which subjects a rank trains on is a pure function of (seed, step, rank): `global_batch` cuts an endless
stream of per-epoch permutations of the training subjects into global batches of `batch × accumulate ×
world` positions, and each rank takes its strided share. So ranks see disjoint data, every epoch is
reshuffled, a resumed run continues the same stream, and K ranks × batch B visit exactly the subjects one
process with batch K·B would — which, with per-sample mean losses and DDP's gradient averaging, gives the
same update.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

#: how long a collective may wait for a rank before failing (a crashed or stuck rank must not hang the
#: others forever; torchrun also stops the remaining workers when one exits with an error)
DEFAULT_TIMEOUT_S = 600.0


class DistributedError(RuntimeError):
    """The ranks disagree about something they must share (the output file, the resumed step)."""


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: no process group (a plain single process)

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and samples."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @classmethod
    def from_env(cls, device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
        """Join torchrun's process group if its environment is set; pick this rank's device.

        `device`: "auto" (CUDA when available, else CPU), "cpu" or "cuda"; under torchrun a CUDA rank
        uses GPU LOCAL_RANK.
        """
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if use_cuda and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available to this process")
        launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ
        if not launched:
            return cls(device=torch.device("cuda") if use_cuda else torch.device("cpu"))
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            if local_rank >= torch.cuda.device_count():
                raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) here: "
                                 f"use --nproc-per-node ≤ {torch.cuda.device_count()}")
            torch.cuda.set_device(local_rank)
            dev, backend = torch.device("cuda", local_rank), "nccl"
        else:
            dev, backend = torch.device("cpu"), "gloo"
        if not dist.is_initialized():
            kwargs = {"device_id": dev} if backend == "nccl" else {}
            dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
        return cls(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend)

    def close(self) -> None:
        """Leave the process group cleanly (idempotent)."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    # ---------------------------------------------------------------- collectives (no-ops alone)
    def mean(self, values: list[float]) -> list[float]:
        """Element-wise mean of per-rank floats over all ranks (for logging)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return (t / self.world_size).tolist()

    def gather_ints(self, value: int) -> list[int]:
        if not self.distributed:
            return [value]
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        out = [torch.zeros_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return [int(x.item()) for x in out]

    def require_same(self, value: int, what: str) -> None:
        """Fail on every rank (not hang) when the ranks disagree, naming the fix."""
        values = self.gather_ints(value)
        if len(set(values)) > 1:
            raise DistributedError(f"ranks disagree on {what}: {values} (by rank). Put --output on a file system "
                                   "every host sees, so all ranks resume from the same checkpoint")

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def stream_positions(num_items: int, seed: int, first: int, count: int) -> np.ndarray:
    """Items at positions first..first+count-1 of the endless stream of per-epoch permutations."""
    if num_items <= 0:
        raise ValueError("no items to draw from")
    pos = np.arange(first, first + count)
    epochs, offsets = np.divmod(pos, num_items)
    out = np.empty(count, dtype=np.int64)
    for epoch in np.unique(epochs):
        perm = np.random.default_rng([seed, int(epoch)]).permutation(num_items)
        sel = epochs == epoch
        out[sel] = perm[offsets[sel]]
    return out


def global_batch(num_items: int, seed: int, step: int, micro_batch: int, accumulate: int, world_size: int,
                 rank: int) -> list[list[tuple[int, int]]]:
    """This rank's micro-batches at `step`: `accumulate` lists of (stream position, item index).

    The global batch is `micro_batch × accumulate × world_size` consecutive stream positions; rank r takes
    every world_size-th one starting at r, then cuts its share into micro-batches. The position keys
    per-sample randomness, so a sample is treated the same whichever rank or micro-batch draws it.
    """
    size = micro_batch * accumulate * world_size
    first = step * size
    items = stream_positions(num_items, seed, first, size)
    mine = [(first + i, int(items[i])) for i in range(rank, size, world_size)]
    return [mine[a * micro_batch:(a + 1) * micro_batch] for a in range(accumulate)]
