"""Flags for a rehearsal: reads go to the real provider, flips are recorded and never written.

``migrate run --dry-run`` swaps the playbook's provider for this one (CONVENTIONS 6:
the same path, another sink). The flag step then runs as in a real run — snapshot,
flip, verify — and its details say what the real run would change, before → after,
while the application keeps seeing exactly what it saw.
"""

from __future__ import annotations

import threading

from migrate.ports import FlagChange, FlagProvider, FlagSnapshot, FlagTarget


class RecordingFlags:
    """A FlagProvider that remembers flips per (flag, tenant) instead of making them."""

    def __init__(self, real: FlagProvider) -> None:
        self._real = real
        self._flipped: dict[tuple[str, str], bool] = {}
        self._changes: list[FlagChange] = []
        self._mutex = threading.Lock()

    @property
    def changes(self) -> list[FlagChange]:
        """Every flip that would have been made, in order."""
        with self._mutex:
            return list(self._changes)

    def target(self) -> FlagTarget:
        return self._real.target()

    def is_enabled(self, flag: str, tenant: str) -> bool:
        with self._mutex:
            if (flag, tenant) in self._flipped:
                return self._flipped[(flag, tenant)]
        return self._real.is_enabled(flag, tenant)

    def _record(self, flag: str, tenant: str, enabled: bool) -> FlagChange:
        before = self.is_enabled(flag, tenant)
        change = FlagChange(flag, tenant, before, enabled)
        with self._mutex:
            self._flipped[(flag, tenant)] = enabled
            self._changes.append(change)
        return change

    def set_enabled(self, flag: str, tenant: str, enabled: bool) -> FlagChange:
        return self._record(flag, tenant, enabled)

    def snapshot(self, flag: str, tenant: str) -> FlagSnapshot:
        return self._real.snapshot(flag, tenant)

    def restore(self, snapshot: FlagSnapshot) -> FlagChange:
        return self._record(snapshot.flag, snapshot.tenant, snapshot.enabled)
