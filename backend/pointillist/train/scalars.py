"""Training scalars: the CSV log (`<checkpoint>.log.csv`) and TensorBoard event files (`<checkpoint>.tb/`).

TensorBoard's own package needs protobuf ≥ 6, which mediapipe 0.10.21 (protobuf < 5) rules out, and
`torch.utils.tensorboard` imports it; tensorboardX writes the same event format with protobuf 4.
`tensorboard --logdir <checkpoint>.tb` (any TensorBoard install, e.g. in another environment) reads them.

A resumed run first drops the rows a stopped run logged after its last checkpoint (they are trained
again), in the CSV by an atomic rewrite and in TensorBoard by `purge_step`.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from ..atomic import atomic_write


class ScalarLog:
    def __init__(self, csv_path: Path, tb_dir: Path | None, resume_step: int = 0):
        self.csv_path = Path(csv_path)
        if self.csv_path.exists():
            truncate_csv(self.csv_path, resume_step)
        self.writer = None
        if tb_dir is not None:
            from tensorboardX import SummaryWriter

            # events at steps after the checkpoint were not kept (they are trained again); a fresh run purges
            # everything an earlier run at this path left
            # (the suffix keeps a run resumed within the same second from reusing, so truncating, the last file)
            self.writer = SummaryWriter(str(tb_dir), purge_step=resume_step + 1, flush_secs=30,
                                        filename_suffix=f".from{resume_step:09d}")

    def write(self, row: dict) -> None:
        """Append one step's row to the CSV and its numeric fields to TensorBoard."""
        header = _header(self.csv_path) if self.csv_path.exists() else []
        if header and set(row) - set(header):  # a new column (e.g. a stage with more terms): rewrite once
            header = list(dict.fromkeys(header + list(row)))
            _rewrite(self.csv_path, header)
        with open(self.csv_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header or list(row), restval="")
            if not header:
                w.writeheader()
            w.writerow(row)
        if self.writer is not None:
            step = int(row["step"])
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{row.get('stage', 'train')}/{key}", value, step)

    def add_image(self, tag: str, image_hwc, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, image_hwc, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _header(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def _rewrite(path: Path, fields: list[str], keep=lambda row: True) -> None:
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if keep(r)]

    def write(fh) -> None:
        import io

        text = io.StringIO()
        w = csv.DictWriter(text, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)
        fh.write(text.getvalue().encode())

    atomic_write(path, write)


def truncate_csv(path: Path, step: int) -> None:
    """Drop rows after `step` (logged by a run that stopped before saving them)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        late = any(int(r["step"]) > step for r in reader)
    if late:
        _rewrite(path, fields, keep=lambda r: int(r["step"]) <= step)
