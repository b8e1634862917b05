"""`pointillist dataset …` commands; `cli.py` registers them with `add_dataset_commands(subparsers)`.

Kept apart from `dataset.py` so `--help` does not import torch. The command functions raise
`DatasetError` (a `ValueError`) for problems the user can fix.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


# option name -> DatasetConfig field
_CONFIG_OPTIONS = {"subjects": "subjects", "views": "views", "image_size": "image_size", "ar_voxel": "ar_voxel_m",
                   "seed": "seed", "shard_size": "shard_size"}


def add_dataset_commands(subparsers) -> argparse.ArgumentParser:
    """Register `dataset build|card|contact-sheet|sample-points|verify` on the top-level subparsers; returns the `dataset` parser."""
    ds = subparsers.add_parser("dataset", help="the sharded synthetic training set: build, summarise, inspect")
    sub = ds.add_subparsers(dest="dataset_command", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("build", help="build, resume or grow a dataset folder (shards + index.json)",
                       description="Options left out come from the folder's index.json when it exists (so a bare "
                                   "`dataset build -o DIR` resumes), otherwise from the defaults.")
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    p.add_argument("--subjects", type=_positive_int, metavar="N", help="total subjects (default 1024; more grows an existing set)")
    p.add_argument("--views", type=_positive_int, metavar="V", help="renders per subject (default 4; view 0 is the portrait)")
    p.add_argument("--image-size", type=_positive_int, metavar="S", help="side of the stored renders (default 224)")
    p.add_argument("--ar-voxel", type=_positive_float, metavar="M", help="AR target voxel edge in metres (default 0.010)")
    p.add_argument("--seed", type=_non_negative_int, metavar="S", help="subject i is procedural seed S + i (default 0)")
    p.add_argument("--shard-size", type=_positive_int, metavar="K", help="subjects per shard file (default 32)")
    p.add_argument("--workers", type=_positive_int, default=1, metavar="W", help="shards built in parallel processes (default 1)")
    p.set_defaults(func=cmd_dataset_build)

    p = sub.add_parser("card", help="Markdown summary (splits, styles, AR points, Gaussians, beard styles, skin tones, hair colours, glasses, expressions) and one JSON line")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(func=cmd_dataset_card)

    p = sub.add_parser("contact-sheet", help="a labelled PNG grid of the subjects' portrait views (of DIR, or --synth)",
                       description="A grid of ceil(sqrt(n)) columns. With --synth no dataset is needed: the first n "
                                   "subjects of a fresh config (seed --seed, one view at --image-size) are synthesised.")
    p.add_argument("dir", metavar="DIR", nargs="?", help="a dataset folder (leave out with --synth)")
    p.add_argument("-o", "--output", required=True, metavar="PNG")
    p.add_argument("-n", type=_positive_int, default=16, help="subjects (default 16)")
    p.add_argument("--view", type=_non_negative_int, default=0, help="which view (default 0, the portrait)")
    p.add_argument("--split", choices=["train", "heldout", "all"], default="all")
    p.add_argument("--random", action="store_true", help="a seeded random sample of the subjects instead of the first n")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="sample seed (--random), dataset seed (--synth)")
    p.add_argument("--synth", action="store_true", help="synthesise n subjects now instead of reading DIR")
    p.add_argument("--image-size", type=_positive_int, default=128, metavar="S", help="tile side with --synth (default 128)")
    p.add_argument("--workers", type=_positive_int, default=1, metavar="W", help="processes with --synth (default 1)")
    p.add_argument("--no-labels", action="store_true", help="no id / style / attribute labels on the tiles")
    p.set_defaults(func=cmd_dataset_contact_sheet)

    p = sub.add_parser("sample-points", help="the generator's own point sequences for training subjects (for `train decoder --generated-points`)",
                       description="Samples training subjects as `create` does (carving, default sampling) and stores what "
                                   "the transformer wrote in one .npz; resumes an interrupted run. --part I/N takes every "
                                   "N-th subject from the I-th, so N processes can share the work (one file each).")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--checkpoint", required=True, metavar="SAFETENSORS")
    p.add_argument("-o", "--output", required=True, metavar="NPZ")
    p.add_argument("--subjects", type=_positive_int, default=256, metavar="N", help="training subjects, balanced across hair styles")
    p.add_argument("--part", default="0/1", metavar="I/N", help="this process's share (default 0/1: all)")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="subject choice and sampling seed (seed + subject id)")
    p.add_argument("--batch", type=_positive_int, default=8, metavar="B",
                   help="subjects sampled together, one transformer step for all (default 8)")
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads")
    p.set_defaults(func=cmd_dataset_sample_points)

    p = sub.add_parser("verify", help="check every shard's size, sha256 and layout against index.json")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(func=cmd_dataset_verify)
    return ds


def config_from_args(args: argparse.Namespace):
    """DatasetConfig: the options given, the rest from DIR/index.json when it exists, else the defaults."""
    from .dataset import INDEX_NAME, DatasetConfig, DatasetIndex

    out = Path(args.output)
    base = DatasetIndex.load(out).config if (out / INDEX_NAME).exists() else DatasetConfig()
    changes = {field: getattr(args, opt) for opt, field in _CONFIG_OPTIONS.items() if getattr(args, opt, None) is not None}
    return type(base)(**{**base.to_json(), **changes}).validate()


def cmd_dataset_build(args: argparse.Namespace) -> dict:
    from .dataset import build_dataset

    config = config_from_args(args)
    print(f"dataset {args.output}: {config.subjects} subjects in {config.num_shards} shards "
          f"({config.views} views at {config.image_size}², AR voxel {config.ar_voxel_m} m)", file=sys.stderr)

    def progress(p) -> None:
        what = "kept (verified)" if p.kept else f"built in {p.seconds:.1f} s ({p.seconds / max(p.subjects, 1):.2f} s/subject)"
        print(f"[{p.done}/{p.total}] {p.file}: {p.subjects} subjects {what}", file=sys.stderr, flush=True)

    summary = build_dataset(args.output, config, workers=args.workers, progress=progress).to_json()
    print(json.dumps(summary))
    return summary


def cmd_dataset_card(args: argparse.Namespace) -> dict:
    from .dataset import card_markdown, dataset_card

    card = dataset_card(args.dir)
    print(card_markdown(card))
    print()
    print(json.dumps(card))
    return card


def cmd_dataset_contact_sheet(args: argparse.Namespace) -> None:
    from PIL import Image

    from ..atomic import atomic_write
    from .dataset import DatasetError, contact_sheet, synth_contact_sheet

    if args.synth == (args.dir is not None):
        raise DatasetError("give a dataset DIR or --synth (not both, not neither)")
    if args.synth:
        sheet = synth_contact_sheet(n=args.n, seed=args.seed, image_size=args.image_size, label=not args.no_labels,
                                    workers=args.workers)
    else:
        sheet = contact_sheet(args.dir, n=args.n, view=args.view, split=args.split, label=not args.no_labels,
                              random=args.random, seed=args.seed)
    atomic_write(args.output, lambda fh: Image.fromarray(sheet).save(fh, format="PNG"))
    print(json.dumps({"output": str(args.output), "width": int(sheet.shape[1]), "height": int(sheet.shape[0])}))


def cmd_dataset_sample_points(args: argparse.Namespace) -> None:
    from .dataset import DatasetError
    from .generated_points import build_generated_points

    try:
        first, parts = (int(x) for x in args.part.split("/"))
    except ValueError:
        raise DatasetError(f"--part must look like I/N (e.g. 0/2), got {args.part!r}") from None
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        meta = build_generated_points(args.checkpoint, args.dir, args.output, args.subjects, (first, parts), seed=args.seed,
                                      batch=args.batch,
                                      log=lambda line: print(line, file=sys.stderr, flush=True))
    except ValueError as exc:
        raise DatasetError(str(exc)) from None
    print(json.dumps({"output": str(args.output), **meta}))


def cmd_dataset_verify(args: argparse.Namespace) -> None:
    from .dataset import DatasetError, DatasetIndex, verify_dataset

    problems = verify_dataset(args.dir)
    index = DatasetIndex.load(args.dir)
    print(json.dumps({"dir": str(args.dir), "shards": len(index.shards), "subjects": len(index.subjects), "problems": problems}))
    if problems:
        raise DatasetError(f"{len(problems)} damaged shard(s); the first: {problems[0]} (re-run `dataset build` to repair)")
