"""The `interlock` command line: validate, graph, test, serve, and the job commands (submit,
jobs, show, watch, cancel, approve, explain, send-event, pause, resume, redrive, rerun; in
jobs.py, on interlock_client).

It sits above `engine` (validate, graph), `server` (serve) and `interlock_client` (the job
commands), which never import it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

# The engine is imported by the commands that use it: the job commands start without it.
from interlock_cli import test_command


def _validate(args: argparse.Namespace) -> int:
    from engine.blueprint.loader import validate_paths

    blueprints, problems = validate_paths(args.paths)
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity == "warning"]
    for problem in problems:
        if problem.severity == "error" or not args.no_warnings:
            print(problem)
    if not args.quiet:
        print(
            f"{len(blueprints)} blueprint(s) valid, {len(errors)} error(s), "
            f"{len(warnings)} warning(s)",
            file=sys.stderr,
        )
    return 1 if errors else 0


def _graph(args: argparse.Namespace) -> int:
    from engine.blueprint.dot import GraphvizMissing, render, to_dot
    from engine.blueprint.loader import load_blueprint
    from engine.errors import BlueprintError

    try:
        blueprint = load_blueprint(args.file)
    except BlueprintError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    if args.format == "dot":
        data = to_dot(blueprint).encode("utf-8")
    else:
        try:
            data = render(blueprint, args.format)
        except GraphvizMissing as exc:
            print(f"interlock graph: {exc}", file=sys.stderr)
            return 2
    if args.output:
        Path(args.output).write_bytes(data)
    elif args.format == "dot":
        sys.stdout.write(data.decode("utf-8"))
    elif sys.stdout.isatty():
        print(f"interlock graph: {args.format} output is binary; use -o FILE", file=sys.stderr)
        return 2
    else:
        sys.stdout.buffer.write(data)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from server.main import serve_command  # lazily: `validate` and `graph` need no aiohttp

    return serve_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interlock", description="Interlock: a declarative workflow orchestrator."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser(
        "validate",
        help="check blueprint files or folders and report every problem",
        description="Check blueprints; print each problem as FILE:LINE:COL: PATH: MESSAGE. "
        "Exit status 1 if any error was found.",
    )
    validate.add_argument("paths", nargs="+", metavar="PATH", help="blueprint file or folder")
    validate.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    validate.add_argument("--no-warnings", action="store_true", help="print errors only")
    validate.set_defaults(handler=_validate)

    graph = commands.add_parser(
        "graph",
        help="print a blueprint as Graphviz DOT (or render it)",
        description="Print the blueprint's graph as DOT for Graphviz Online, or render it "
        "with Graphviz `dot`.",
    )
    graph.add_argument("file", metavar="FILE", help="blueprint file")
    graph.add_argument("-f", "--format", choices=("dot", "svg", "png"), default="dot")
    graph.add_argument("-o", "--output", metavar="OUT", help="write to this file")
    graph.set_defaults(handler=_graph)

    test_command.add_parser(commands)

    serve = commands.add_parser(
        "serve",
        help="run the HTTP server (client API, worker API) on Redis or the embedded store",
        description="Serve the client API (/api/v1) and the worker API (/_worker). Settings "
        "come from environment variables (REDIS_URL, BLUEPRINTS_DIR, CLIENT_TOKEN, ...); "
        "these flags override them. Exit status 2 for a configuration mistake, 1 when the "
        "blueprints or the store are not usable, 0 after SIGTERM or SIGINT.",
    )
    serve.add_argument("--host", metavar="HOST", help="address to listen on (API_HOST)")
    serve.add_argument("--port", metavar="PORT", help="port to listen on (API_PORT)")
    serve.add_argument(
        "--redis-url",
        metavar="URL",
        help="memory://, redis://host:6379/0, rediss://... or unix:///path (REDIS_URL)",
    )
    serve.add_argument(
        "--blueprints", metavar="DIR", help="folder of blueprint YAML files (BLUEPRINTS_DIR)"
    )
    serve.add_argument(
        "--clients-config",
        metavar="FILE",
        help="clients.toml with client tokens (CLIENTS_CONFIG_PATH)",
    )
    serve.add_argument(
        "--workers-config",
        metavar="FILE",
        help="workers.toml with worker tokens (WORKERS_CONFIG_PATH)",
    )
    serve.add_argument(
        "--schedules-config",
        metavar="FILE",
        help="schedules.toml: jobs started on a timetable (SCHEDULES_CONFIG_PATH)",
    )
    serve.set_defaults(handler=_serve)

    from interlock_cli.jobs import add_commands  # the job commands need no engine

    add_commands(commands)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
