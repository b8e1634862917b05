"""`python -m pointillist.server …`: the same as `pointillist serve …`."""

from __future__ import annotations

import argparse
import sys

from .. import passive_openmp

passive_openmp()  # before .main imports torch: the render endpoint's rasterizer needs its threads

from .main import add_serve_arguments, run_serve  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pointillist serve", description="the Pointillist backend service")
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
