"""Unleash flags: per-tenant flips through the Admin API, confirmed with the official SDK.

Where the tenant list lives
    In the flag's named environment, in strategies this package owns: flexibleRollout
    at 100 % with one constraint ``tenantId IN [sorted tenant ids]``, titled
    ``tenant-migrate: tenants``. The flag's other strategies are never written.

    A constraint, not a segment: a segment is one object for every environment and
    project, so a list per flag and environment needs a segment per pair; its
    changes are audited as segment events, not on the flag; and a snapshot of the
    flag alone would not say who was on. A constraint change is an event on the
    flag in its environment (``search/events``, with before and after), and a
    snapshot of the environment's strategies is the whole truth. The price is 250
    values per constraint (``UNLEASH_CONSTRAINT_VALUES_LIMIT``; a segment holds
    1000 and needs sharding past that too): beyond ``values_per_strategy`` tenants
    the list goes on in a further strategy, ``tenant-migrate: tenants (2)``, ORed
    with the first (30 strategies per environment: over 7,000 tenants).

The traps of shared/notes/unleash.md, and what is done about each:

1. An environment turned on with no strategy is on for everyone: the tenant
   strategy is created first (``migrate flags sync``); an environment is turned on
   only when it holds it, and never when other enabled strategies would go live.
2. Deleting the last strategy turns the environment off: the first tenant strategy
   is never deleted; an empty list is written as the placeholder ``(none)`` (the
   server refuses an empty ``IN`` list with a 400), which no tenant id can equal.
3. Lost updates: writers of one flag hold one lock that every runner shares (a
   PostgreSQL advisory lock on the target database, passed in), write the whole
   list with a guarded JSON Patch (``test`` the list read, then ``replace``: the
   server answers a failed test with a 500 naming TEST_OPERATION_FAILED, a
   conflict, not an outage), and read it back.
4. ``IN`` is case-sensitive and keeps duplicates: ids are lower-cased, stripped,
   written sorted and once; a list holding anything else is refused.
5. Limits: see above.

A flip is then confirmed with the SDK (``UnleashClient``) against the client API,
as the application sees it (``sdk.py``): a fresh client per probe with an
in-memory cache (never ``~/.cache``, which may hold an earlier run's state),
polling (streaming answers 404 on the open-source server and then reads False),
a bounded wait (the server publishes changes to its client API once a second),
and a fetch that fails is an error, never False.

Modules: ``admin.py`` (the Admin API: retries, errors with their fix, the flag's
environment as read), ``sdk.py`` (what the application sees), ``lock.py`` (the
writers' lock), ``provider.py`` (flips, snapshots, restore, sync).
"""

from migrate.adapters.unleash.admin import PLACEHOLDER, PROVIDER, TITLE, UnleashSettings
from migrate.adapters.unleash.lock import FlagLock, advisory_lock
from migrate.adapters.unleash.provider import FlagInfo, SyncedFlag, UnleashFlagProvider, unleash_target

__all__ = [
    "PLACEHOLDER",
    "PROVIDER",
    "TITLE",
    "FlagInfo",
    "FlagLock",
    "SyncedFlag",
    "UnleashFlagProvider",
    "UnleashSettings",
    "advisory_lock",
    "unleash_target",
]
