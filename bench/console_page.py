"""The web console's jobs page with many jobs in the store: page weight and time to first
render, in a real headless Chromium (Debian's `chromium`, driven by Playwright).

    .venv/bin/python -m bench.console_page [-n 10000] [--runs 5] [--redis-url URL]

It starts `interlock serve` (the embedded `memory://` store unless --redis-url is given)
with the example blueprints, submits N jobs over REST (no worker runs, so they stay queued
or waiting for a person), then opens the jobs page in fresh browser contexts (cold cache)
and prints:

- time to first render: from the start of navigation to the first job row in the table
  (`performance.now()` when a MutationObserver in the page sees the row), median and max
  over the runs, and when the
  answer with the first page of jobs had arrived (Resource Timing `responseEnd`);
- page weight: the bytes each request of the page transferred (Resource Timing), for the
  jobs page and, for comparison, a blueprint page (which loads Graphviz in WebAssembly);
- the API's own time for the first page of `GET /api/v1/jobs`, unfiltered and with a
  status filter that matches no job (which reads every job of the client).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from playwright.sync_api import Browser, sync_playwright

from tests.support.processes import CLIENT_TOKEN, serve

HEADERS = {"X-Client-Token": CLIENT_TOKEN}
ROW = "#jobs tbody tr[data-job]"


async def submit_many(url: str, n: int, concurrency: int = 50) -> float:
    """Submit n jobs (alternately image_pipeline and expense_approval); returns seconds."""
    started = time.perf_counter()
    queue = iter(range(n))
    async with aiohttp.ClientSession(url, headers=HEADERS) as http:

        async def one_by_one() -> None:
            for i in queue:
                if i % 2:
                    path, data = "jobs/expense_approval", {"amount": i, "employee": f"e{i}"}
                else:
                    path, data = "jobs/image_pipeline", {"url": f"https://x.test/{i}.png"}
                async with http.post(f"/api/v1/{path}", json={"initial_data": data}) as resp:
                    assert resp.status == 202, await resp.text()

        await asyncio.gather(*(one_by_one() for _ in range(concurrency)))
    return time.perf_counter() - started


async def api_ms(url: str, query: dict[str, str], runs: int = 5) -> float:
    times = []
    async with aiohttp.ClientSession(url, headers=HEADERS) as http:
        for _ in range(runs):
            started = time.perf_counter()
            async with http.get("/api/v1/jobs", params=query) as resp:
                assert resp.status == 200
                await resp.read()
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def open_page(browser: Browser, url: str, wait_for: str) -> tuple[float, list[dict[str, Any]]]:
    """(ms to `wait_for` from navigation start, [{name, bytes}] per request) in a new context."""
    context = browser.new_context()
    context.add_init_script(f"sessionStorage.setItem('interlock.clientToken', '{CLIENT_TOKEN}')")
    # Note the moment the element first exists, from inside the page (a MutationObserver),
    # rather than when the test driver gets to see it.
    context.add_init_script(
        "new MutationObserver((_, observer) => {"
        f"  if (document.querySelector({wait_for!r})) {{"
        "    window.__shown = performance.now(); observer.disconnect(); }"
        "}).observe(document, {subtree: true, childList: true});"
    )
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector(wait_for, timeout=60_000)
    ms: float = page.evaluate("() => window.__shown")
    entries: list[dict[str, Any]] = page.evaluate(
        """() => [...performance.getEntriesByType('navigation'),
                  ...performance.getEntriesByType('resource')]
             .map(e => ({name: e.name, bytes: e.transferSize, end: e.responseEnd}))"""
    )
    context.close()
    return ms, entries


def weight(entries: list[dict[str, Any]], base: str) -> str:
    lines = [
        f"    {e['bytes']:>9,} B  {e['name'].removeprefix(base)[:70]}"
        for e in sorted(entries, key=lambda e: -int(e["bytes"]))
    ]
    total = sum(int(e["bytes"]) for e in entries)
    return "\n".join([*lines, f"    {total:>9,} B  total transferred ({len(entries)} requests)"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=10_000, help="jobs in the store")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--redis-url", default="memory://")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("needs Debian's chromium: apt-get install chromium (or: make chromium)")
    with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp), args.redis_url) as server:
        seconds = asyncio.run(submit_many(server.url, args.n))
        print(f"{args.n:,} jobs submitted in {seconds:.1f} s (store: {args.redis_url})")
        plain = asyncio.run(api_ms(server.url, {"limit": "50"}))
        empty = asyncio.run(api_ms(server.url, {"limit": "50", "status": "finished"}, runs=3))
        print(f"GET /api/v1/jobs?limit=50: {plain:.1f} ms (median)")
        print(f"GET /api/v1/jobs?limit=50&status=finished (matches none): {empty:.1f} ms")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium)
            runs = [open_page(browser, f"{server.url}/#/jobs", ROW) for _ in range(args.runs)]
            times = [ms for ms, _ in runs]
            answered = [
                next(e["end"] for e in entries if "/api/v1/jobs?" in e["name"])
                for _, entries in runs
            ]
            print(
                f"jobs page, time to first render ({args.runs} cold loads): "
                f"median {statistics.median(times):.0f} ms, max {max(times):.0f} ms "
                f"(the first page of jobs had arrived at {statistics.median(answered):.0f} ms)"
            )
            print("jobs page weight:")
            print(weight(runs[0][1], server.url))
            ms, entries = open_page(
                browser, f"{server.url}/#/blueprints/image_pipeline", "#graph svg g.node"
            )
            print(f"blueprint page (graph drawn in {ms:.0f} ms) weight:")
            print(weight(entries, server.url))
            browser.close()


if __name__ == "__main__":
    main()
