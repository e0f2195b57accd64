"""`interlock test`: run blueprint test files offline and report each case.

The runner needs the embedded store (the `server` extra: redis-py, fakeredis with Lua); it
is imported when the command runs, so `interlock validate` and `graph` work without it.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from engine.durations import format_duration

if TYPE_CHECKING:
    from engine.testkit.suite import CaseResult


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    test = commands.add_parser(
        "test",
        help="run blueprint test files (*.test.yaml) offline, on a fake clock",
        description="Run each case of the test files (or of every *.test.yaml below the "
        "folders) against the real orchestrator on the embedded store, with scripted workers "
        "and a fake clock. Exit status 1 if a case failed or a file is invalid.",
    )
    test.add_argument("paths", nargs="+", metavar="PATH", help="test file or folder")
    test.add_argument("-k", metavar="PATTERN", help="only cases whose name matches (glob)")
    test.add_argument(
        "--coverage", action="store_true", help="report states and edges no case took"
    )
    test.add_argument(
        "--graph", metavar="DIR", help="write BLUEPRINT.dot files with the taken edges drawn"
    )
    test.add_argument("-q", "--quiet", action="store_true", help="print failures only")
    test.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        import fakeredis  # noqa: F401  # the embedded store the cases run on
    except ImportError:
        print(
            "interlock test: the embedded store is not installed; pip install 'interlock[server]'",
            file=sys.stderr,
        )
        return 2
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    from engine.testkit.spec import TestFileInvalid, find_test_files, load_test_file
    from engine.testkit.suite import BlueprintCache, Coverage, run_one

    files, problems = find_test_files(args.paths)
    for problem in problems:
        print(problem)
    cache = BlueprintCache()
    coverage = Coverage()
    results: list[CaseResult] = []
    invalid = len(problems)
    for path in files:
        try:
            file = load_test_file(path)
        except TestFileInvalid as exc:
            invalid += 1
            for problem in exc.problems:
                print(problem)
            continue
        for case in file.cases:
            if args.k and not fnmatch.fnmatchcase(case.name, args.k):
                continue
            result = await run_one(cache, file, case)
            results.append(result)
            _print_result(result, args.quiet)
            if result.run is not None:
                coverage.add(result.run)
    for blueprints in cache.loaded():
        coverage.include(blueprints)
    failed = sum(not r.passed for r in results)
    if args.coverage:
        print("\n".join(coverage.report()))
    if args.graph:
        for written in coverage.write_graphs(Path(args.graph)):
            print(f"wrote {written}", file=sys.stderr)
    sys.stdout.flush()  # the summary on stderr comes after the report, in a terminal too
    summary = f"{len(results) - failed} passed, {failed} failed"
    if invalid:
        summary += f", {invalid} invalid file(s)"
    print(summary, file=sys.stderr)
    return 1 if failed or invalid or not results else 0


def _print_result(result: CaseResult, quiet: bool) -> None:
    if result.passed:
        if not quiet:
            assert result.run is not None
            took = format_duration(result.run.elapsed_ms / 1000)
            print(f"PASS {result.title} ({result.run.status} after {took})")
        return
    print(f"FAIL {result.title}")
    for failure in result.failures:
        print("  " + failure.replace("\n", "\n  "))
