"""The store's errors, one tree under StoreError (re-exported by engine.store.client)."""

from __future__ import annotations

from engine.errors import InterlockError


class StoreError(InterlockError):
    """The job store failed."""


class StoreUnavailable(StoreError):
    """Redis could not be reached or answered with an error."""


class PartitionMismatch(StoreError):
    """This Redis was set up with another partition count than the one configured."""


class StoreConfigError(StoreError):
    """The URL, or the Redis it names, cannot be used as it is; the message says what to
    change (a cluster node behind a plain URL, a cluster without full slot coverage)."""
