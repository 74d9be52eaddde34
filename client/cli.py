"""The ``xsyn`` command: one sub-command per job, errors as one clear line.

Exit codes: 0 success, 1 the job ran but something in it failed (reported), 2 bad input or a
missing dependency (one line on stderr naming the value or file and what was expected).
"""

from __future__ import annotations

import argparse
import logging
import sys

from xsyn import __version__
from xsyn.errors import MissingDependency, XsynError

#: Commands that need the ``server`` extra (torch, ONNX Runtime, tritonserver).
SERVER_COMMANDS = ("export", "serve", "health", "repository", "demo", "bench", "train-tiny", "quality")


def add_server_commands(sub) -> None:
    """Register the export / serving commands, or, in a client-only install, stand-ins that say
    what to install (the client commands work either way)."""
    try:
        from xsyn.client import bench, demo, quality, train_tiny_command
        from xsyn.export import command as export_command
        from xsyn.serving import command as serving_command
    except ImportError as exc:
        missing = exc.name or str(exc)

        def needs_server(args: argparse.Namespace) -> int:
            raise MissingDependency(f"`xsyn {args.command}` needs the server extra (missing: {missing}); "
                                    f"pip install 'xsyn[server]'")

        for name in SERVER_COMMANDS:
            p = sub.add_parser(name, help="needs the server extra: pip install 'xsyn[server]'")
            p.set_defaults(handler=needs_server, any_arguments=True)
        return
    export_command.add_parser(sub)
    serving_command.add_parsers(sub)
    demo.add_parser(sub)
    bench.add_parser(sub)
    train_tiny_command.add_parser(sub)
    quality.add_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xsyn", description="Xsyn synthesis and APSAM annotation on Triton.")
    parser.add_argument("--version", action="version", version=f"xsyn {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    from xsyn.client import annotate_job, sample_data_command, synthesize_job

    add_server_commands(sub)
    sample_data_command.add_parser(sub)
    synthesize_job.add_parser(sub)
    annotate_job.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
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
