"""`python -m pointillist.server …`: the same as `pointillist serve …`."""

from __future__ import annotations

import argparse
import sys

from .main import add_serve_arguments, run_serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pointillist serve", description="the Pointillist backend service")
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
