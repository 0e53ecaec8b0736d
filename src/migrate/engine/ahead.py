"""Connecting to the next tenants' sources, and reading them once, while the workers copy.

Before its first step a tenant's session connects to the tenant's source and reads its
tables — with a schema step to run, the fingerprint of the whole source schema
(catalog/built.py). On a fresh connection to a database of its own that is most of a small
tenant's fixed cost: the connection, and a new backend's cold catalog caches (~15 ms of a
0-row tenant's ~35). None of it needs the tenant's lock or writes anything, so one thread of
the run does it for the tenants the workers will take next. The worker then takes the
connection over and reads again on it (catalog/built.py finds the schema the read ahead
read): on a warm backend that is a fraction of the first read, and a change made to the
source after the read ahead and before the tenant began is seen, as without read-ahead. A
read not begun yet, or failed, is the worker's to do, so an error is raised and recorded
where it always was.

Bounds: reads ahead only within a wave, for at most ``ahead`` tenants past the one a worker
starts (``--jobs``), so the run holds at most ``--jobs`` source connections more than its
workers do. Whatever is not taken is closed when its tenant ends or the wave does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from migrate.engine.session import SourceRead
from migrate.log import get_logger
from migrate.plan.model import TenantPlan

Read = Callable[[TenantPlan], SourceRead]


class ReadAhead:
    """Reads sources ahead of the workers, in the order they take the tenants; thread-safe."""

    def __init__(self, plans: Sequence[TenantPlan], read: Read, *, ahead: int, stop: threading.Event) -> None:
        self._order = [tp.tenant.id for tp in plans if tp.remaining]
        self._plans = {tp.tenant.id: tp for tp in plans}
        self._position = {tenant: i for i, tenant in enumerate(self._order)}
        self._read = read
        self._ahead = max(0, ahead)
        self._stop = stop
        self._mutex = threading.Lock()
        self._reads: dict[str, Future[SourceRead]] = {}
        self._started: set[str] = set()  # tenants a worker has begun: never read ahead again
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead")
        self.taken = 0  # reads a worker used (for tests and the log)

    def begin(self, plan: TenantPlan) -> Claim:
        """A worker begins ``plan``'s tenant: the next tenants are read ahead; the claim gives the
        session this tenant's read once it holds the lock, and is released when the tenant ends."""
        tenant = plan.tenant.id
        with self._mutex:
            self._started.add(tenant)
            mine = self._reads.pop(tenant, None)
            at = self._position.get(tenant)
            if at is not None and not self._stop.is_set():
                for later in self._order[at + 1 : at + 1 + self._ahead]:
                    if later not in self._started and later not in self._reads:
                        self._reads[later] = self._pool.submit(self._read, self._plans[later])
        return Claim(self, mine)

    def _took(self) -> None:
        with self._mutex:
            self.taken += 1

    def close(self) -> None:
        """Cancel what has not begun and close every read no worker took."""
        with self._mutex:
            left, self._reads = list(self._reads.values()), {}
        for read in left:
            read.cancel()
        self._pool.shutdown(wait=True)
        for read in left:
            if read.done() and not read.cancelled() and read.exception() is None:
                read.result().close()


class Claim:
    """One tenant's read ahead: taken by its session (once), else closed when released."""

    def __init__(self, owner: ReadAhead, read: Future[SourceRead] | None) -> None:
        self._owner = owner
        self._read = read

    def __call__(self) -> SourceRead | None:
        """The read, or None when it never began or failed (the session then reads the source itself)."""
        read, self._read = self._read, None
        if read is None or read.cancel():
            return None
        try:
            got = read.result()
        except Exception as exc:  # the session reads again itself, and raises what it finds
            get_logger().debug("read_ahead_failed", error=str(exc))
            return None
        if got.source.closed or got.source.broken:
            got.close()
            return None
        self._owner._took()
        return got

    def release(self) -> None:
        """The tenant ended without taking its read (refused, locked elsewhere, stopped): close it."""
        read, self._read = self._read, None
        if read is not None and not read.cancel():
            try:
                got = read.result()
            except Exception:  # nothing was opened, or the read closed what it had opened
                return
            got.close()
