"""Rate limits per task type: at most `rate` tasks of a type leased per second, `burst` at once.

Set in the server config, `TASK_RATE_LIMITS="resize_image=10/s:20,send_email=600/m"`
(server/config.py). Each limited type has one token bucket in Redis under its own hash tag
(`{r:<type>}`, engine/store/keys.py), taken from and refilled by one script
(engine/store/lua/tokens.lua) on Redis's own clock, so every orchestrator shares it exactly.

Where: the dispatcher leases a limited type's tasks only through its pump (never by the
direct hand-off of a new task to a waiting poll, which leases inside the job's commit). Per
pass it takes as many tokens as it found queued tasks and free polls, leases at most that
many (lease.lua is unchanged), and gives back the tokens it did not use (a task that went
meanwhile). A lease is therefore never made without a token, whichever orchestrator makes
it: in any T seconds at most burst + rate x T leases. Tasks over the limit stay queued
(their dispatch timeout still applies), and the pump looks again when the next token is due.
A crash between taking tokens and leasing loses at most those tokens (the bucket refills):
fewer leases, never more.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

TASK_TYPE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
MAX_BURST = 1_000_000
ENTRY = re.compile(
    r"^(?P<type>[^=\s]+)\s*=\s*(?P<count>[0-9.]+)\s*/\s*(?P<unit>[smh])(?::(?P<burst>\d+))?$"
)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `rate` tasks of `task_type` leased per second, `burst` at once."""

    task_type: str
    rate: float  # tokens per second
    burst: int  # the bucket's size


def parse_rate_limits(text: str) -> tuple[RateLimit, ...]:
    """`type=COUNT/UNIT[:BURST],...` (UNIT `s`, `m` or `h`; BURST by default one second's
    worth of tasks, at least 1). ValueError naming the entry at fault."""
    limits: dict[str, RateLimit] = {}
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        found = ENTRY.match(entry)
        if found is None:
            raise ValueError(
                f"{entry!r} is not a rate limit; write TYPE=COUNT/UNIT[:BURST] with UNIT s, m "
                "or h, such as resize_image=10/s:20"
            )
        task_type = found["type"]
        if not TASK_TYPE.match(task_type):
            raise ValueError(f"{task_type!r} is not a task type (letters, digits and `_ . : -`)")
        if task_type in limits:
            raise ValueError(f"task type {task_type!r} has two rate limits")
        try:
            count = float(found["count"])
        except ValueError:
            raise ValueError(f"{entry!r}: {found['count']!r} is not a number") from None
        rate = count / UNITS[found["unit"]]
        if not math.isfinite(rate) or rate <= 0 or rate > MAX_BURST:
            raise ValueError(f"{entry!r}: the rate must be above 0 and at most {MAX_BURST}/s")
        burst = int(found["burst"]) if found["burst"] else max(1, math.ceil(rate))
        if not 1 <= burst <= MAX_BURST:
            raise ValueError(f"{entry!r}: the burst must be 1 to {MAX_BURST}")
        limits[task_type] = RateLimit(task_type, rate, burst)
    return tuple(limits.values())
