"""The article's experiments, measured on this machine, one command each.

    convtune experiment NAME [--out DIR] [--full]      NAME: layout, im2col-memory, spatial-pack,
                                                       winograd, indirect, tuning-curves,
                                                       transfer, all

Each experiment writes DIR/<name>.json (raw numbers with the machine, CPU, TVM version, date,
thread count and the command), DIR/<name>.png (matplotlib, an optional extra), and the report
DIR.md (`--report` to put it elsewhere; default docs/experiments.md) is regenerated from every JSON
in DIR: a single experiment replaces its own section, `all` rewrites them all. Defaults are small
(minutes on 2 cores); `--full` runs the article's sizes and more timing rounds.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from . import report as report_module
from .registry import DEFAULT_OUT, EXPERIMENTS, NAMES, module, report_path

__all__ = ["DEFAULT_OUT", "EXPERIMENTS", "NAMES", "add_parser", "command_line", "module", "report_path", "run"]

def run(names: list[str], out: str = DEFAULT_OUT, preset: str = "default", threads: int | None = None,
        logs: str = "logs", report: str | None = None, command: str = "") -> tuple[dict, dict]:
    """Run experiments and regenerate the report; returns ({name: payload}, {name: error})."""
    from ..target import resolve_target, set_threads  # noqa: PLC0415 - keep `--help` light
    from .common import PRESETS, Context  # noqa: PLC0415

    target = resolve_target("x86", threads)
    set_threads(target.threads)
    ctx = Context(out=out, preset=PRESETS[preset], target=target, logs=logs, command=command)
    payloads, errors = {}, {}
    for name in names:
        print(f"== experiment {name} ({preset}, {target.threads} threads) ==", file=sys.stderr, flush=True)
        try:
            payloads[name] = module(name).run(ctx)
        except Exception as err:  # noqa: BLE001 - one failed experiment must not lose the others
            traceback.print_exc()
            errors[name] = f"{type(err).__name__}: {err}"
    report_module.write(out, report_path(out, report))
    return payloads, errors


# -- the command line ------------------------------------------------------------------------------------
def add_parser(subparsers) -> None:
    """Add `experiment` to convtune's sub-commands."""
    p = subparsers.add_parser("experiment", help="run the article's experiments here: raw JSON, plots, report",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=NAMES + ("all",), help="which experiment (all: every one, the whole report)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"directory for the JSON and PNG files (default {DEFAULT_OUT})")
    p.add_argument("--report", default=None, help="the report to regenerate (default: <out>.md)")
    p.add_argument("--full", action="store_true", help="the article's sizes and more timing rounds (slow)")
    p.add_argument("--threads", type=int, default=None, help="threads for timing and tuning (default: all cores)")
    p.add_argument("--logs", default="logs",
                   help="tuning records for the Winograd and indirect timings (default ./logs; default configs "
                        "where a layer has none)")
    p.set_defaults(func=cmd_experiment)


def command_line(args) -> str:
    parts = ["convtune", "experiment", args.name]
    if args.full:
        parts.append("--full")
    if args.out != DEFAULT_OUT:
        parts += ["--out", args.out]
    if args.report:
        parts += ["--report", args.report]
    if args.threads is not None:
        parts += ["--threads", str(args.threads)]
    if args.logs != "logs":
        parts += ["--logs", args.logs]
    return " ".join(parts)


def cmd_experiment(args) -> int:
    if args.threads is not None and args.threads <= 0:
        print(f"convtune experiment: error: --threads must be positive, got {args.threads}", file=sys.stderr)
        return 2
    names = list(NAMES) if args.name == "all" else [args.name]
    payloads, errors = run(names, out=args.out, preset="full" if args.full else "default", threads=args.threads,
                           logs=args.logs, report=args.report, command=command_line(args))
    for name in payloads:
        print(f"{name}: {os.path.join(args.out, name + '.json')}")
    print(f"report: {report_path(args.out, args.report)}")
    for name, error in errors.items():
        print(f"convtune experiment: {name} failed: {error}", file=sys.stderr)
    return 1 if errors else 0
