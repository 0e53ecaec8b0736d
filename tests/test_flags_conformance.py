"""One conformance suite for every flag provider: the file (embedded) and a real Unleash server.

Each test runs against both. What the application sees is checked with a plain
``UnleashClient`` of the test's own, independent of the provider under test.
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest

# The SDK re-exports its client without __all__, which strict mypy reads as private.
from UnleashClient import UnleashClient  # type: ignore[attr-defined]
from UnleashClient.cache import FileCache
from UnleashClient.utils import InstanceAllowType

from migrate.adapters.flagfile import FileFlagProvider, FlagDefinition
from migrate.adapters.unleash import UnleashFlagProvider, advisory_lock
from migrate.control import schema
from migrate.control.store import ControlStore
from migrate.log import get_logger
from migrate.playbook.model import FlagStep as FlagSpec
from migrate.playbook.model import Tenant
from migrate.ports import FlagProvider
from migrate.steps import StepContext, step_for
from unleash_eyes import app_sees_on_server, environment_state, unleash_settings
from unleash_server import UnleashEndpoint

DEMO_DEFINITIONS = Path(__file__).resolve().parent.parent / "flags" / "demo.json"
ROUNDS = 20


@dataclass
class Flags:
    """A provider under test, how to make another one (another runner) and independent eyes."""

    kind: str
    flag: str
    make: Callable[[], FlagProvider]
    app_sees: Callable[[str], bool]  # what a plain SDK client says for a tenant
    raw: Callable[[], Any]  # the provider's stored state of the flag, as JSON

    def provider(self) -> FlagProvider:
        return self.make()


def _file_flags(tmp_path: Path) -> Flags:
    path = tmp_path / "state" / "flags.json"
    FileFlagProvider(path, definitions=DEMO_DEFINITIONS)
    flag = "tenant-shared-db"

    def app_sees(tenant: str) -> bool:
        with tempfile.TemporaryDirectory() as cache_dir:
            cache = FileCache("conformance", directory=cache_dir)
            cache.bootstrap_from_file(path)
            client = UnleashClient(
                "http://unused.invalid/api",
                "conformance",
                cache=cache,
                disable_metrics=True,
                disable_registration=True,
                multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
            )
            client.initialize_client(fetch_toggles=False)
            try:
                return bool(client.is_enabled(flag, {"tenantId": tenant}))
            finally:
                client.destroy()

    def raw() -> Any:
        return json.loads(path.read_text())

    return Flags("file", flag, lambda: FileFlagProvider(path), app_sees, raw)


def _unleash_flags(unleash: UnleashEndpoint, pg_admin_dsn: str, flag: str) -> Flags:
    def make() -> FlagProvider:
        lock = advisory_lock(lambda: psycopg.connect(pg_admin_dsn, autocommit=True))
        return UnleashFlagProvider(unleash_settings(unleash), lock=lock)

    provider = make()
    assert isinstance(provider, UnleashFlagProvider)
    provider.sync([FlagDefinition(flag, "conformance", "release")])
    return Flags(
        "unleash",
        flag,
        make,
        lambda tenant: app_sees_on_server(unleash, flag, tenant),
        lambda: environment_state(unleash, flag),
    )


@pytest.fixture(params=["file", "unleash"])
def flags(request: pytest.FixtureRequest, tmp_path: Path) -> Flags:
    if request.param == "file":
        return _file_flags(tmp_path)
    unleash: UnleashEndpoint = request.getfixturevalue("unleash")
    pg_admin_dsn: str = request.getfixturevalue("pg_admin_dsn")
    return _unleash_flags(unleash, pg_admin_dsn, f"tm-conf-{uuid4().hex[:10]}")


def test_enable_turns_the_flag_on_for_that_tenant_only(flags: Flags) -> None:
    """After enable for acme, the provider and a plain SDK client say on for acme and off for globex."""
    provider = flags.provider()

    change = provider.set_enabled(flags.flag, "acme", True)

    assert (change.before, change.after, change.changed) == (False, True, True)
    assert provider.is_enabled(flags.flag, "acme") is True
    assert provider.is_enabled(flags.flag, "globex") is False
    assert flags.app_sees("acme") is True
    assert flags.app_sees("globex") is False


def test_disable_turns_it_off_for_that_tenant_and_leaves_the_others_on(flags: Flags) -> None:
    """Disabling acme makes it off for acme while globex, enabled too, stays on."""
    provider = flags.provider()
    provider.set_enabled(flags.flag, "acme", True)
    provider.set_enabled(flags.flag, "globex", True)

    change = provider.set_enabled(flags.flag, "acme", False)

    assert (change.before, change.after) == (True, False)
    assert (flags.app_sees("acme"), flags.app_sees("globex")) == (False, True)
    assert (provider.is_enabled(flags.flag, "acme"), provider.is_enabled(flags.flag, "globex")) == (
        False,
        True,
    )


def test_a_second_identical_flip_changes_nothing(flags: Flags) -> None:
    """Enabling twice reports no change the second time and leaves the stored state as it was."""
    provider = flags.provider()
    provider.set_enabled(flags.flag, "acme", True)
    stored = flags.raw()

    change = provider.set_enabled(flags.flag, "acme", True)

    assert (change.before, change.after, change.changed) == (True, True, False)
    assert flags.raw() == stored


def test_restore_puts_back_exactly_what_the_snapshot_recorded(flags: Flags) -> None:
    """snapshot → enable → restore leaves the stored flag equal, as JSON, to what it was; twice is once."""
    provider = flags.provider()
    provider.set_enabled(flags.flag, "globex", True)
    before = flags.raw()
    snapshot = provider.snapshot(flags.flag, "acme")
    provider.set_enabled(flags.flag, "acme", True)
    assert flags.raw() != before

    change = provider.restore(snapshot)

    assert (change.before, change.after) == (True, False)
    assert flags.raw() == before
    assert (flags.app_sees("acme"), flags.app_sees("globex")) == (False, True)
    assert provider.restore(snapshot).changed is False
    assert flags.raw() == before


def test_restoring_one_tenant_keeps_another_tenants_later_flip(flags: Flags) -> None:
    """A restore of acme's snapshot does not undo globex's flip made after the snapshot."""
    provider = flags.provider()
    snapshot = provider.snapshot(flags.flag, "acme")
    provider.set_enabled(flags.flag, "acme", True)
    provider.set_enabled(flags.flag, "globex", True)

    provider.restore(snapshot)

    assert (flags.app_sees("acme"), flags.app_sees("globex")) == (False, True)


def test_a_snapshot_survives_json_and_restores_in_another_provider(flags: Flags) -> None:
    """A snapshot written to JSON (the control schema) and read back restores through a new provider."""
    before = flags.raw()
    snapshot = flags.provider().snapshot(flags.flag, "acme")
    flags.provider().set_enabled(flags.flag, "acme", True)
    stored = json.loads(json.dumps(snapshot.to_json()))

    from migrate.ports import FlagSnapshot

    flags.provider().restore(FlagSnapshot.from_json(stored))

    assert flags.raw() == before


@pytest.mark.slow
def test_two_tenants_flipped_in_parallel_never_lose_an_update(flags: Flags) -> None:
    """Two runners flip acme and globex at the same moment, 20 rounds on and off: neither flip is lost."""
    runners = {"acme": flags.provider(), "globex": flags.provider()}
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def flip(tenant: str, enabled: bool) -> None:
        try:
            barrier.wait(timeout=30)
            runners[tenant].set_enabled(flags.flag, tenant, enabled)
        except BaseException as exc:
            errors.append(exc)

    for round_ in range(ROUNDS):
        wanted = round_ % 2 == 0
        threads = [threading.Thread(target=flip, args=(t, wanted)) for t in runners]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == [], f"round {round_}: {errors}"
        seen = {t: runners[t].is_enabled(flags.flag, t) for t in runners}
        assert seen == {"acme": wanted, "globex": wanted}, f"round {round_}: an update was lost: {seen}"
    assert (flags.app_sees("acme"), flags.app_sees("globex")) == (False, False)


@pytest.fixture
def step_context(flags: Flags, fresh_dsn: str) -> Iterator[Callable[[], StepContext]]:
    """A step context per call (a new runner), on a real control schema; flags from the provider."""
    schema.upgrade(fresh_dsn, "migrate_control")
    conns: list[psycopg.Connection[Any]] = []

    def make() -> StepContext:
        conn = psycopg.connect(fresh_dsn, autocommit=True)
        conns.append(conn)
        return StepContext(
            run_id=uuid4(),
            tenant=Tenant(id="acme"),
            source=conn,
            target=conn,
            source_schema="public",
            target_schema="app",
            tables=(),
            control=ControlStore("migrate_control", "conformance"),
            flags=flags.provider(),
            log=get_logger(),
        )

    yield make
    for conn in conns:
        conn.close()


def test_flag_step_replayed_after_a_crash_still_reverts_to_the_state_before_the_first_flip(
    flags: Flags, step_context: Callable[[], StepContext]
) -> None:
    """apply, a crash before 'done', apply again, then revert: the flag is as before the first apply."""
    before = flags.raw()
    step = step_for(FlagSpec(kind="flag", flag=flags.flag, action="enable"))
    step.apply(step_context())  # the runner dies here: the engine never records these details

    replayed = step.apply(step_context())  # the next run applies the step again
    step.verify(step_context(), replayed)
    assert replayed["before"] is False, "the replay recorded the half-done state as 'before'"

    step.revert(step_context(), replayed)
    assert flags.raw() == before
    assert flags.app_sees("acme") is False
    step.revert(step_context(), replayed)  # idempotent
    assert flags.raw() == before
    again = step.apply(step_context())  # after a revert, a fresh snapshot is taken
    assert again["before"] is False and flags.app_sees("acme") is True
