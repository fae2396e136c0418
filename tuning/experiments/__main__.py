"""`python -m tuning.experiments NAME [--out DIR] [--full]`: the same as `convtune experiment`."""

import argparse
import sys

from . import add_parser


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuning.experiments")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["experiment", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
