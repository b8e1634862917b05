"""`pointillist dataset import-gaussian-avatars`: real GaussianAvatars subjects into a dataset folder.

`cli.py` wires it with ``add_real_data_commands(add_dataset_commands(sub))``. Kept apart from
`real_data.py` so ``--help`` does not import torch. Problems the user can fix raise `RealDataError`
(a `ValueError`) naming the file and field.
"""

from __future__ import annotations

import argparse
import json
import sys

from .dataset_cli import _non_negative_int, _positive_float, _positive_int


def _dataset_subparsers(dataset) -> argparse._SubParsersAction:
    """The `dataset` command's subparsers, from that parser or the subparsers object itself."""
    if isinstance(dataset, argparse._SubParsersAction):
        return dataset
    for action in getattr(dataset, "_actions", []):
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise TypeError("add_real_data_commands needs the `dataset` parser (add_dataset_commands' return value) or its subparsers")


def add_real_data_commands(dataset) -> argparse.ArgumentParser:
    """Register `dataset import-gaussian-avatars` on the `dataset` parser (or its subparsers); returns the new parser."""
    sub = _dataset_subparsers(dataset)
    p = sub.add_parser(
        "import-gaussian-avatars", help="real subjects: GaussianAvatars outputs + NeRSemble-style cameras -> shards + index.json",
        description="One subject per SRC (a GaussianAvatars output folder: point_cloud.ply + flame_param.npz, or "
                    "point_cloud/iteration_N/). Cameras and images come from transforms_{train,val,test}.json in SRC, "
                    "in the --data folder given for it, or in the source_path of SRC/cfg_args. Views are taken from the "
                    "most neutral timestep (view 0: its most frontal camera) and warped into the portrait pipeline's "
                    "aligned crop; the folder reads like a synthetic one (train, dataset card, verify, streaming).")
    p.add_argument("sources", nargs="+", metavar="SRC", help="GaussianAvatars output folder(s), one subject each")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="new dataset folder")
    p.add_argument("--head", required=True, metavar="FLAME.npz",
                   help="the FLAME head model (with teeth and landmarks) from `pointillist head import-flame`")
    p.add_argument("--data", action="append", metavar="DIR",
                   help="data folder with transforms_*.json for the SRC at the same position (repeat once per SRC)")
    p.add_argument("--views", type=_positive_int, default=4, metavar="V", help="views per subject (default 4)")
    p.add_argument("--image-size", type=_positive_int, default=224, metavar="S", help="side of the stored crops (default 224)")
    p.add_argument("--shard-size", type=_positive_int, default=32, metavar="K", help="subjects per shard file (default 32)")
    p.add_argument("--heldout-every", type=_positive_int, default=10, metavar="N",
                   help="subject i is held out when i %% N == N - 1 (default 10)")
    p.add_argument("--ar-voxel", type=_positive_float, default=0.010, metavar="M", help="AR target voxel edge in metres (default 0.010)")
    p.add_argument("--background", choices=["random", "keep"], default="random",
                   help="random: composite over seeded synthetic backgrounds using the mask (default); keep: the photo as is")
    p.add_argument("--seed", type=_non_negative_int, default=0, metavar="S", help="seed of the random backgrounds (default 0)")
    p.set_defaults(func=cmd_import_gaussian_avatars)
    return p


def cmd_import_gaussian_avatars(args: argparse.Namespace) -> dict:
    from ..head.model import HeadModel
    from .real_data import RealDataError, import_gaussian_avatars

    try:
        head = HeadModel.load(args.head)
    except FileNotFoundError:
        raise RealDataError(f"{args.head}: head model not found (option --head)") from None

    def progress(i: int, n: int, src) -> None:
        print(f"[{i + 1}/{n}] {src}", file=sys.stderr, flush=True)

    summary = import_gaussian_avatars(args.sources, args.output, head, data_dirs=args.data, views=args.views,
                                      image_size=args.image_size, shard_size=args.shard_size, heldout_every=args.heldout_every,
                                      ar_voxel_m=args.ar_voxel, seed=args.seed, background=args.background,
                                      progress=progress).to_json()
    print(json.dumps(summary))
    return summary
