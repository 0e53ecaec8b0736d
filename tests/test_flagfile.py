"""The file flag provider: Unleash client-features JSON, evaluated by the official SDK."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

# The SDK re-exports its client without __all__, which strict mypy reads as private.
from UnleashClient import UnleashClient  # type: ignore[attr-defined]
from UnleashClient.cache import FileCache
from UnleashClient.utils import InstanceAllowType

from migrate.adapters.flagfile import FileFlagProvider
from migrate.errors import SettingsError
from world import DEMO, World

DEMO_DEFINITIONS = Path(__file__).resolve().parent.parent / "flags" / "demo.json"
FLAG = "tenant-shared-db"


@pytest.fixture
def provider(tmp_path: Path) -> FileFlagProvider:
    return FileFlagProvider(tmp_path / "state" / "flags.json", definitions=DEMO_DEFINITIONS)


def _app_sees(path: Path, flag: str, tenant: str) -> bool:
    """Evaluate the file the way an application with no server would, independently."""
    with tempfile.TemporaryDirectory() as cache_dir:
        cache = FileCache("test-app", directory=cache_dir)
        cache.bootstrap_from_file(path)
        client = UnleashClient(
            "http://unused.invalid/api",
            "test-app",
            cache=cache,
            disable_metrics=True,
            disable_registration=True,
            multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
        )
        client.initialize_client(fetch_toggles=False)
        try:
            assert flag in client.feature_definitions()
            return bool(client.is_enabled(flag, {"tenantId": tenant}))
        finally:
            client.destroy()


def _feature(values: list[str], strategies: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    strategy = {
        "name": "flexibleRollout",
        "parameters": {"rollout": "100", "stickiness": "default", "groupId": FLAG},
        "constraints": [
            {
                "contextName": "tenantId",
                "operator": "IN",
                "values": values,
                "inverted": False,
                "caseInsensitive": False,
            }
        ],
    }
    return {
        "name": FLAG,
        "enabled": True,
        "strategies": [strategy] if strategies is None else strategies,
    }


def test_enable_turns_the_flag_on_for_that_tenant_only(provider: FileFlagProvider) -> None:
    """Enabling a tenant makes the SDK answer True for it and False for any other tenant."""
    change = provider.set_enabled(FLAG, "acme", True)

    assert (change.before, change.after, change.changed) == (False, True, True)
    assert provider.is_enabled(FLAG, "acme") is True
    assert provider.is_enabled(FLAG, "globex") is False
    assert provider.tenants(FLAG) == ["acme"]


def test_disable_turns_the_flag_off_again(provider: FileFlagProvider) -> None:
    """Disabling a tenant makes the SDK answer False for it and leaves other tenants on."""
    provider.set_enabled(FLAG, "acme", True)
    provider.set_enabled(FLAG, "globex", True)

    change = provider.set_enabled(FLAG, "acme", False)

    assert (change.before, change.after) == (True, False)
    assert provider.is_enabled(FLAG, "acme") is False
    assert provider.is_enabled(FLAG, "globex") is True


def test_enable_twice_changes_nothing(provider: FileFlagProvider) -> None:
    """A second identical flip reports before == after == True and leaves the file's bytes alone."""
    provider.set_enabled(FLAG, "acme", True)
    written = provider.path.read_bytes()

    with capture_logs() as logs:
        change = provider.set_enabled(FLAG, "acme", True)

    assert (change.before, change.after, change.changed) == (True, True, False)
    assert provider.path.read_bytes() == written
    assert logs == []


def test_a_flip_is_logged_with_before_and_after(provider: FileFlagProvider) -> None:
    """A flip that changes something logs flag_flipped with flag, tenant, before and after."""
    with capture_logs() as logs:
        provider.set_enabled(FLAG, "acme", True)

    assert logs == [
        {
            "event": "flag_flipped",
            "log_level": "info",
            "flag": FLAG,
            "tenant": "acme",
            "before": False,
            "after": True,
        }
    ]


def test_tenant_ids_are_normalised_deduplicated_and_sorted(provider: FileFlagProvider) -> None:
    """Tenant ids are stripped and lower-cased, listed once and written sorted."""
    provider.set_enabled(FLAG, "Umbrella", True)
    provider.set_enabled(FLAG, " acme ", True)
    provider.set_enabled(FLAG, "ACME", True)

    values = json.loads(provider.path.read_text())["features"][0]["strategies"][0]["constraints"][0]["values"]
    assert values == ["acme", "umbrella"]
    assert provider.is_enabled(FLAG, "ACME") is True


def test_missing_flag_is_a_settings_error(provider: FileFlagProvider) -> None:
    """Flipping or reading a flag the file does not define raises SettingsError naming the file."""
    with pytest.raises(SettingsError) as flipped:
        provider.set_enabled("no-such-flag", "acme", True)
    with pytest.raises(SettingsError) as read:
        provider.is_enabled("no-such-flag", "acme")

    for error in (flipped.value, read.value):
        assert error.where == str(provider.path)
        assert error.hint is not None
        assert error.hint.startswith("add it to the flag definitions file (flags/*.json)")


def test_empty_tenant_list_is_off_for_everyone(provider: FileFlagProvider) -> None:
    """An empty tenant list is False for every tenant, and the tenant strategy stays in the file."""
    provider.set_enabled(FLAG, "acme", True)
    provider.set_enabled(FLAG, "acme", False)

    feature = json.loads(provider.path.read_text())["features"][0]
    assert feature["enabled"] is True
    assert feature["strategies"][0]["constraints"][0]["values"] == []
    for tenant in ("acme", "globex", "initech"):
        assert provider.is_enabled(FLAG, tenant) is False
        assert _app_sees(provider.path, FLAG, tenant) is False


def test_a_flag_without_its_tenant_strategy_is_refused(tmp_path: Path) -> None:
    """A flag with no strategy, which the SDK evaluates ON for everyone, is refused."""
    definitions = tmp_path / "definitions.json"
    definitions.write_text(json.dumps({"version": 2, "features": [_feature([], strategies=[])]}))

    assert _app_sees(definitions, FLAG, "anyone") is True  # the trap this guards against
    with pytest.raises(SettingsError, match="exactly one strategy"):
        FileFlagProvider(tmp_path / "flags.json", definitions=definitions)
    assert not (tmp_path / "flags.json").exists()


def test_written_file_loads_unchanged_into_a_plain_sdk_client(provider: FileFlagProvider) -> None:
    """A plain UnleashClient bootstrapped from the written file sees exactly the flipped tenants."""
    provider.set_enabled(FLAG, "acme", True)
    provider.set_enabled(FLAG, "initech", True)

    assert _app_sees(provider.path, FLAG, "acme") is True
    assert _app_sees(provider.path, FLAG, "initech") is True
    assert _app_sees(provider.path, FLAG, "globex") is False


def test_file_is_created_from_definitions_and_missing_flags_are_added(tmp_path: Path) -> None:
    """A new file copies the definitions; a flag defined later is added off, the others kept."""
    path = tmp_path / "flags.json"
    FileFlagProvider(path, definitions=DEMO_DEFINITIONS).set_enabled(FLAG, "acme", True)
    later = json.loads(DEMO_DEFINITIONS.read_text())
    later["features"].append(_feature([]) | {"name": "tenant-search-v2"})
    definitions = tmp_path / "later.json"
    definitions.write_text(json.dumps(later))

    provider = FileFlagProvider(path, definitions=definitions)

    assert provider.snapshot_all() == {FLAG: ["acme"], "tenant-search-v2": []}
    assert provider.is_enabled("tenant-search-v2", "acme") is False


def test_missing_file_without_definitions_is_a_settings_error(tmp_path: Path) -> None:
    """Opening a missing flag file with no definitions to create it from raises SettingsError."""
    with pytest.raises(SettingsError, match="does not exist"):
        FileFlagProvider(tmp_path / "flags.json")


def _enable_many(path: str, barrier: Any, tenants: list[str]) -> None:
    """One runner process: wait for the others, then flip its tenants one by one."""
    provider = FileFlagProvider(Path(path))
    barrier.wait()
    for tenant in tenants:
        provider.set_enabled(FLAG, tenant, True)


@pytest.mark.slow
def test_concurrent_runners_never_lose_an_update(provider: FileFlagProvider) -> None:
    """Eight processes each enabling 25 distinct tenants on one flag leave all 200 in the file."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(8)
    batches = [[f"t{runner}-{i:02d}" for i in range(25)] for runner in range(8)]
    runners = [
        ctx.Process(target=_enable_many, args=(str(provider.path), barrier, batch)) for batch in batches
    ]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join(timeout=120)

    assert [runner.exitcode for runner in runners] == [0] * 8
    expected = sorted(tenant for batch in batches for tenant in batch)
    assert provider.tenants(FLAG) == expected
    assert provider.is_enabled(FLAG, "t7-24") is True


def test_a_crash_before_the_rename_leaves_the_old_file(
    provider: FileFlagProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the process dies between writing the temp file and renaming it, the old file is intact."""
    provider.set_enabled(FLAG, "acme", True)
    before = provider.path.read_bytes()
    crash = OSError("simulated crash before rename")

    def crashing_replace(src: Any, dst: Any) -> None:
        raise crash

    # A real crash at this point cannot be produced on demand; os.replace raising is the same cut.
    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(SettingsError) as raised:
        provider.set_enabled(FLAG, "globex", True)
    monkeypatch.undo()

    assert raised.value.__cause__ is crash
    assert provider.path.read_bytes() == before
    assert sorted(p.name for p in provider.path.parent.iterdir()) == [
        "flags.json",
        "flags.json.lock",
    ]
    assert provider.set_enabled(FLAG, "globex", True).changed  # the lock was released


def test_is_enabled_leaves_no_sdk_thread_running(provider: FileFlagProvider) -> None:
    """After is_enabled returns, no thread the SDK started (its scheduler) is still alive."""
    provider.set_enabled(FLAG, "acme", True)
    before = set(threading.enumerate())

    assert provider.is_enabled(FLAG, "acme") is True

    assert set(threading.enumerate()) - before == set()


def test_is_enabled_uses_no_network_and_no_disk_cache(
    provider: FileFlagProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """is_enabled opens no socket and writes nothing to the user's cache directory (~/.cache)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    attempts: list[object] = []

    def no_network(*args: Any, **kwargs: Any) -> None:
        attempts.append(args)
        raise OSError("network used")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    provider.set_enabled(FLAG, "acme", True)

    assert provider.is_enabled(FLAG, "acme") is True

    assert attempts == []
    assert list(home.iterdir()) == []


def test_a_file_the_sdk_cannot_load_is_an_error_not_false(provider: FileFlagProvider) -> None:
    """When the SDK silently loads no flag (numeric rollout), is_enabled raises, not says False."""
    document = json.loads(provider.path.read_text())
    document["features"][0]["strategies"][0]["parameters"]["rollout"] = 100
    provider.path.write_text(json.dumps(document))

    with pytest.raises(SettingsError, match="loaded no flags"):
        provider.is_enabled(FLAG, "acme")
    with pytest.raises(SettingsError, match="rollout"):
        provider.set_enabled(FLAG, "acme", True)


def test_written_file_is_world_readable_with_its_lock_beside_it(provider: FileFlagProvider) -> None:
    """The written file is mode 0644 (an app may run as another user); <file>.lock is beside it."""
    provider.set_enabled(FLAG, "acme", True)

    assert (provider.path.parent / "flags.json.lock").exists()
    assert os.stat(provider.path).st_mode & 0o777 == 0o644


@pytest.mark.tenants("acme", "globex", "initech")
def test_flags_sync_and_status_work_on_the_flag_file(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """'flags status' reads without creating the file; 'flags sync' creates it; status then shows tenants."""
    from migrate.cli.app import main

    for key, value in world.environ.items():
        monkeypatch.setenv(key, value)

    assert main(["flags", "status", str(DEMO), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {t["tenant"]: t["flags"] for t in shown["tenants"]}["acme"] == {FLAG: False}
    assert not world.flag_file.exists(), "status wrote the flag file"

    assert main(["flags", "sync", str(DEMO)]) == 0
    assert f"{FLAG}: created" in capsys.readouterr().out
    assert main(["flags", "sync", str(DEMO)]) == 0
    assert f"{FLAG}: already there" in capsys.readouterr().out

    assert main(["run", str(DEMO), "--tenant", "acme"]) == 0
    capsys.readouterr()
    assert main(["flags", "status", str(DEMO)]) == 0
    out = capsys.readouterr().out
    assert "tenants listed: acme" in out
    shown_rows = [line for line in out.splitlines() if "acme" in line and "cutover" in line]
    assert shown_rows and " on " in f" {shown_rows[0]} "
