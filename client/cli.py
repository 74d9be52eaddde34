"""The ``xsyn`` command: one sub-command per job, errors as one clear line.

Exit codes: 0 success, 1 the job ran but something in it failed (reported), 2 bad input or a
missing dependency (one line on stderr naming the value or file and what was expected).
"""

from __future__ import annotations

import argparse
import logging
import sys

from xsyn import __version__
from xsyn.errors import XsynError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xsyn", description="Xsyn synthesis and APSAM annotation on Triton.")
    parser.add_argument("--version", action="version", version=f"xsyn {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    from xsyn.export import command as export_command
    from xsyn.serving import command as serving_command

    from xsyn.client import annotate_job, demo, sample_data_command, synthesize_job

    export_command.add_parser(sub)
    serving_command.add_parsers(sub)
    sample_data_command.add_parser(sub)
    demo.add_parser(sub)
    synthesize_job.add_parser(sub)
    annotate_job.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except XsynError as exc:
        print(f"xsyn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xsyn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
