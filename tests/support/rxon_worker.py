"""A small worker process speaking the RXON worker protocol, for end-to-end tests.

    python -m tests.support.rxon_worker --url http://127.0.0.1:8080 --id w1 --token T \
        --skills echo,charge_card [--fail-first 1 [--fail-code PERMANENT_ERROR]] \
        [--progress] [--hang] [--exit-on-task] [--slots 4] [--timeline FILE]

It answers every task with its params merged into a fixed set of fields the example
blueprints read (path, url, charge_id, ok), after the failures it was told to simulate.
It prints one line per event to stdout (`registered`, `task <id>`, `result <id> <reply>`)
so tests can follow it. With `--timeline`, each task handled appends one JSON line to FILE:
`job_id`, `task_id`, `start` and `end` (epoch seconds, taken when the handler starts and
before its result is sent).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import aiohttp

FIELDS = {"path": "/tmp/interlock-test.png", "url": "https://example.test/x", "charge_id": "ch_1"}


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.headers = {"X-Worker-ID": args.id, "X-Worker-Token": args.token}
        self.running: set[str] = set()
        self.failures: dict[str, int] = {}

    def say(self, line: str) -> None:
        print(line, flush=True)

    async def run(self) -> None:
        # Say `polling` once a poll's request is on the wire (tests kill a worker then).
        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(self.sent)
        async with aiohttp.ClientSession(
            self.args.url,
            headers=self.headers,
            timeout=aiohttp.ClientTimeout(total=None),
            trace_configs=[trace],
        ) as http:
            self.http = http
            await self.register()
            beat = asyncio.create_task(self.heartbeats())
            await asyncio.gather(*(self.poll() for _ in range(self.args.slots)))
            beat.cancel()

    async def register(self) -> None:
        body = {
            "worker_id": self.args.id,
            "worker_type": "test",
            "supported_skills": [{"name": s, "type": s} for s in self.skills],
        }
        while True:
            try:
                async with self.http.post("/_worker/workers/register", json=body) as resp:
                    if resp.status == 200:
                        self.say("registered")
                        return
                    self.say(f"register-failed {resp.status} {await resp.text()}")
            except aiohttp.ClientError as exc:
                self.say(f"register-error {exc!r}")
            await asyncio.sleep(0.2)

    async def sent(self, session: Any, context: Any, params: Any) -> None:
        if params.url.path.endswith("/tasks/next"):
            self.say("polling")

    @property
    def skills(self) -> list[str]:
        return [s for s in self.args.skills.split(",") if s]

    async def heartbeats(self) -> None:
        while True:
            body = {
                "worker_id": self.args.id,
                "status": "idle",
                "current_tasks": sorted(self.running),
            }
            try:
                async with self.http.patch(f"/_worker/workers/{self.args.id}", json=body) as resp:
                    if resp.status == 404:
                        await self.register()
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(self.args.heartbeat)

    async def poll(self) -> None:
        query = {"timeout": self.args.poll_timeout, "available_skills": ",".join(self.skills)}
        while True:
            try:
                async with self.http.get(
                    f"/_worker/workers/{self.args.id}/tasks/next", params=query
                ) as resp:
                    if resp.status == 204:
                        continue
                    if resp.status != 200:
                        self.say(f"poll-failed {resp.status}")
                        await asyncio.sleep(0.5)
                        continue
                    task = await resp.json()
            except aiohttp.ClientError:
                await asyncio.sleep(0.2)
                continue
            await self.handle(task)

    async def handle(self, task: dict[str, Any]) -> None:
        task_id = task["task_id"]
        self.say(f"task {task_id} {task['type']}")
        if self.args.exit_on_task:
            os._exit(17)  # a crash mid-task: no result, no goodbye
        self.running.add(task_id)
        start = time.time()
        try:
            if self.args.hang:
                await asyncio.sleep(3600)
            if self.args.progress:
                await self.progress(task, 0.5, "halfway")
            await asyncio.sleep(self.args.delay)
            seen = self.failures.get(task["job_id"], 0)
            if seen < self.args.fail_first:
                self.failures[task["job_id"]] = seen + 1
                result: dict[str, Any] = {
                    "status": "failure",
                    "error": {"code": self.args.fail_code, "message": "simulated failure"},
                }
            else:
                result = {"data": {**FIELDS, **task.get("params", {})}}
            if self.args.timeline:
                self.stamp(task, start, time.time())
            await self.send(task, result)
        finally:
            self.running.discard(task_id)

    def stamp(self, task: dict[str, Any], start: float, end: float) -> None:
        line = {"job_id": task["job_id"], "task_id": task["task_id"], "start": start, "end": end}
        with open(self.args.timeline, "a", encoding="utf-8") as sink:
            sink.write(json.dumps(line) + "\n")

    async def progress(self, task: dict[str, Any], progress: float, message: str) -> None:
        body = {
            "event_id": f"{task['task_id']}-{progress}",
            "worker_id": self.args.id,
            "origin_worker_id": self.args.id,
            "event_type": "progress",
            "payload": {"progress": progress, "message": message},
            "origin_task_id": task["task_id"],
            "target_job_id": task["job_id"],
        }
        async with self.http.post("/_worker/events", json=body) as resp:
            self.say(f"progress {task['task_id']} {resp.status}")

    async def send(self, task: dict[str, Any], result: dict[str, Any]) -> None:
        body = {
            "job_id": task["job_id"],
            "task_id": task["task_id"],
            "worker_id": self.args.id,
            **result,
        }
        for _ in range(20):
            try:
                async with self.http.post("/_worker/tasks/result", json=body) as resp:
                    if resp.status == 200:
                        self.say(f"result {task['task_id']} {(await resp.json()).get('status')}")
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--skills", required=True)
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--fail-code", default="TRANSIENT_ERROR")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--heartbeat", type=float, default=0.5)
    parser.add_argument("--progress", action="store_true", help="report 50% before the delay")
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--exit-on-task", action="store_true")
    parser.add_argument("--poll-timeout", default="2", help="seconds a poll may wait")
    parser.add_argument("--timeline", default="", help="append each task's times (JSON lines)")
    args = parser.parse_args()
    try:
        asyncio.run(Worker(args).run())
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
