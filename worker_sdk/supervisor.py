"""Keeps the worker known to one orchestrator: registration, heartbeats, probing.

- Down (at start, or after a call found it unreachable): register, retrying with backoff
  (POLL_BACKOFF_INITIAL doubling to POLL_BACKOFF_MAX). A successful registration puts the
  orchestrator back in use, which is how FAILOVER returns to a recovered primary.
- Up: a heartbeat every WORKER_HEARTBEAT_INTERVAL listing every task the worker holds for
  any orchestrator (running, or with its result not yet delivered): orchestrators sharing one
  Redis share the record, and a task missing from it counts as lost. The answer's
  `cancel_task_ids` cancel running tasks.
- A heartbeat answered 404 "not found" (the orchestrator forgot the worker: restart, TTL)
  or 401/403 leads to a new registration after a backoff delay; so does an unreachable
  orchestrator. A worker never spins between registering and a refused heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from worker_sdk.config import WorkerConfig
from worker_sdk.connection import Backoff, Connection, RateLimited, Refused, Unavailable

log = logging.getLogger("worker_sdk")

GOODBYE_TIMEOUT_S = 2.0


class Supervisor:
    def __init__(
        self,
        config: WorkerConfig,
        connection: Connection,
        registration: Callable[[], dict[str, Any]],
        heartbeat: Callable[[], dict[str, Any]],
        cancel: Callable[[list[str]], None],
    ) -> None:
        self.config = config
        self.connection = connection
        self.registration = registration
        self.heartbeat = heartbeat
        self.cancel = cancel
        self._went_down: asyncio.Future[None] | None = None
        self._logged = ""  # the last registration problem logged, to log each one once
        self._registered_once = False
        connection.listeners.append(self._changed)

    def _changed(self) -> None:
        if not self.connection.up and self._went_down is not None and not self._went_down.done():
            self._went_down.set_result(None)

    async def run(self) -> None:
        backoff = Backoff(self.config.backoff_initial, self.config.backoff_max)
        while True:
            if not self.connection.up:
                if not await self._register():
                    await asyncio.sleep(backoff.next())
                    continue
            elif not await self._interval_passed():
                continue  # down while we waited: probe it
            # A beat right after registering tells the orchestrator what we hold at once.
            if await self._beat():
                backoff.reset()
            elif not self.connection.up:
                # Refused or unreachable: wait before registering again, so that a server
                # forgetting us on every heartbeat cannot make us spin (protocol doc §6).
                await asyncio.sleep(backoff.next())

    async def _interval_passed(self) -> bool:
        """Sleep one heartbeat interval; False if the connection went down meanwhile."""
        self._went_down = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self.config.heartbeat_interval):
                await self._went_down
            return False
        except TimeoutError:
            return True
        finally:
            self._went_down.cancel()

    async def _register(self) -> bool:
        connection = self.connection
        try:
            await connection.register(self.registration())
        except Refused as exc:
            if exc.unauthorized:
                self._problem(
                    logging.ERROR,
                    f"orchestrator {connection.url} refused worker "
                    f"{self.config.worker_id!r}: {exc.message} (HTTP {exc.status}); check "
                    f"the token from {connection.config.token_source} against the orchestrator's "
                    "WORKER_TOKEN or workers.toml",
                )
            else:
                self._problem(
                    logging.ERROR,
                    f"orchestrator {connection.url} refused the registration of "
                    f"{self.config.worker_id!r}: {exc.message} (HTTP {exc.status})",
                )
            connection.reason = str(exc)
            return False
        except (Unavailable, RateLimited) as exc:
            self._problem(logging.WARNING, f"orchestrator {connection.url} unreachable: {exc}")
            connection.reason = str(exc)
            return False
        if self._logged or not self._registered_once:
            skills = ", ".join(s["name"] for s in self.registration()["supported_skills"])
            log.info("registered with %s as %r (%s)", connection.url, self.config.worker_id, skills)
        self._logged = ""
        self._registered_once = True
        connection.mark_up()
        return True

    def _problem(self, level: int, message: str) -> None:
        if message != self._logged:
            log.log(level, "%s; retrying with backoff", message)
            self._logged = message

    async def _beat(self) -> bool:
        """One heartbeat; True when it was answered."""
        connection = self.connection
        try:
            cancels = await connection.heartbeat(self.heartbeat())
        except Refused as exc:
            if exc.worker_unknown or exc.unauthorized:
                log.info(
                    "orchestrator %s forgot this worker (%s); registering again",
                    connection.url,
                    exc,
                )
                connection.mark_down(str(exc), quiet=True)
            else:
                log.warning("heartbeat refused by %s: %s", connection.url, exc)
            return False
        except Unavailable as exc:
            connection.mark_down(f"heartbeat failed: {exc}")
            return False
        except RateLimited as exc:
            log.debug("heartbeat to %s rate limited: %s", connection.url, exc)
            return False
        if cancels:
            self.cancel(cancels)
        return True

    async def goodbye(self, body: dict[str, Any]) -> None:
        """The `offline` heartbeat at shutdown (best effort, short)."""
        if not self.connection.up:
            return
        try:
            async with asyncio.timeout(GOODBYE_TIMEOUT_S):
                await self.connection.heartbeat(body)
        except (TimeoutError, Unavailable, RateLimited, Refused) as exc:
            log.debug("offline heartbeat to %s failed: %s", self.connection.url, exc)
