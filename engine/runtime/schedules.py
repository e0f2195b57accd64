"""Scheduled jobs from `schedules.toml`: exactly one job per tick, however many orchestrators.

    [nightly_report]
    blueprint = "reminder"
    cron = "0 2 * * *"          # or: every = "10m"
    timezone = "Europe/Berlin"  # default UTC; cron fields are read in this zone
    initial_data = {user = "ops"}

Every orchestrator computes the same ticks. The job of a tick gets an id derived from the
schedule name and the tick, and creating a job whose id exists does nothing, so whichever
orchestrator comes first starts it and the others find it there. `every` ticks are aligned
to multiples of the interval since the Unix epoch, so all processes agree on them.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from engine.durations import parse_duration
from engine.errors import InterlockError

#: A tick missed while no orchestrator ran is still started if it is at most this old.
CATCH_UP = timedelta(minutes=5)


class ScheduleError(InterlockError):
    """schedules.toml is malformed; the message names the file, the table and the fix."""


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    blueprint: str
    initial_data: Any
    zone: ZoneInfo
    cron: str | None = None
    every_s: float | None = None
    client: str = "scheduler"

    def ticks(self, after: datetime, until: datetime) -> list[datetime]:
        """Ticks t with after < t <= until, oldest first (UTC)."""
        found: list[datetime] = []
        if self.every_s is not None:
            step = self.every_s
            n = int(after.timestamp() // step) + 1
            while n * step <= until.timestamp():
                found.append(datetime.fromtimestamp(n * step, UTC))
                n += 1
            return found
        assert self.cron is not None
        walker = croniter(self.cron, after.astimezone(self.zone))
        while True:
            tick = walker.get_next(datetime).astimezone(UTC)
            if tick > until:
                return found
            found.append(tick)

    def job_id(self, tick: datetime) -> str:
        return hashlib.sha256(f"schedule|{self.name}|{tick.isoformat()}".encode()).hexdigest()[:32]


def load_schedules(path: Path, blueprints: set[str]) -> list[Schedule]:
    """Read and check a schedules file; ScheduleError names file, table and problem."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScheduleError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScheduleError(f"{path}: {exc}") from None
    schedules = []
    for name, table in raw.items():
        where = f"{path}: [{name}]"
        if not isinstance(table, dict):
            raise ScheduleError(f"{where}: expected a table like [{name}] with blueprint and cron")
        schedules.append(_schedule(where, name, table, blueprints))
    return schedules


def _schedule(where: str, name: str, table: dict[str, Any], blueprints: set[str]) -> Schedule:
    allowed = {"blueprint", "cron", "every", "timezone", "initial_data", "client"}
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ScheduleError(
            f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}"
        )
    blueprint = table.get("blueprint")
    if not isinstance(blueprint, str) or blueprint not in blueprints:
        known = ", ".join(sorted(blueprints))
        raise ScheduleError(f"{where}: blueprint {blueprint!r} is not loaded (loaded: {known})")
    cron, every = table.get("cron"), table.get("every")
    if (cron is None) == (every is None):
        raise ScheduleError(f'{where}: give exactly one of cron = "*/5 * * * *" or every = "10m"')
    every_s = None
    if cron is not None and (not isinstance(cron, str) or not croniter.is_valid(cron)):
        raise ScheduleError(f"{where}: cron {cron!r} is not a valid cron expression")
    if every is not None:
        try:
            every_s = parse_duration(every)
        except ValueError as exc:
            raise ScheduleError(f"{where}: every: {exc}") from None
        if every_s < 1:
            raise ScheduleError(f"{where}: every must be at least 1s")
    zone_name = table.get("timezone", "UTC")
    try:
        zone = ZoneInfo(str(zone_name))
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"{where}: unknown timezone {zone_name!r} (e.g. Europe/Berlin)"
        ) from None
    client = table.get("client", "scheduler")
    if not isinstance(client, str) or not client:
        raise ScheduleError(f"{where}: client must be a non-empty string")
    return Schedule(
        name=name,
        blueprint=blueprint,
        initial_data=table.get("initial_data", {}),
        zone=zone,
        cron=cron,
        every_s=every_s,
        client=client,
    )
