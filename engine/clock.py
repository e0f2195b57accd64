"""The one wall clock of the engine and the server: Unix time in whole milliseconds.

Job documents, leases, timers and history all count in these; the transition rules never
read it themselves (they are handed `now`), so tests can run them on a fake clock.
"""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the Unix epoch, now."""
    return int(time.time() * 1000)
