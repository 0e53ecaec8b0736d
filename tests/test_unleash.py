"""The Unleash provider against a real server: each trap of shared/notes/unleash.md, errors, retries,
`migrate flags sync|status`, and a server stopped in the middle of a run."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

# The SDK re-exports its client without __all__, which strict mypy reads as private.
from UnleashClient import UnleashClient  # type: ignore[attr-defined]
from UnleashClient.cache import FileCache
from UnleashClient.utils import InstanceAllowType

from migrate import api
from migrate.adapters.flagfile import FlagDefinition
from migrate.adapters.unleash import PLACEHOLDER, TITLE, UnleashFlagProvider, advisory_lock
from migrate.cli.app import main
from migrate.errors import CheckFailed, SettingsError
from unleash_eyes import (
    app_sees_on_server,
    environment_state,
    playbook_flag,
    unleash_playbook,
    unleash_settings,
)
from unleash_server import UnleashEndpoint, UnleashServer, free_port
from world import DEMO, World

pytestmark = pytest.mark.tenants("acme", "globex")  # the world of the `migrate flags` tests


def provider_for(unleash: UnleashEndpoint, lock_dsn: str, **overrides: Any) -> UnleashFlagProvider:
    lock = advisory_lock(lambda: psycopg.connect(lock_dsn, autocommit=True))
    return UnleashFlagProvider(unleash_settings(unleash, **overrides), lock=lock)


@pytest.fixture
def provider(unleash: UnleashEndpoint, pg_admin_dsn: str) -> Iterator[UnleashFlagProvider]:
    flags = provider_for(unleash, pg_admin_dsn)
    yield flags
    flags.close()


@pytest.fixture
def admin(unleash: UnleashEndpoint) -> Iterator[httpx.Client]:
    """The Admin API as a person (or the UI) uses it, beside the provider."""
    with httpx.Client(
        base_url=unleash.url, headers={"Authorization": unleash.admin_token}, timeout=10
    ) as client:
        yield client


@pytest.fixture
def synced(provider: UnleashFlagProvider, flag_name: str) -> str:
    """A flag created by sync: off, holding only the tenant strategy."""
    provider.sync([FlagDefinition(flag_name, "test flag", "release")])
    return flag_name


def env_path(unleash: UnleashEndpoint, flag: str) -> str:
    return f"/api/admin/projects/default/features/{flag}/environments/{unleash.environment}"


def add_strategy(
    admin: httpx.Client, unleash: UnleashEndpoint, flag: str, body: dict[str, Any]
) -> dict[str, Any]:
    resp = admin.post(f"{env_path(unleash, flag)}/strategies", json=body)
    resp.raise_for_status()
    created: dict[str, Any] = resp.json()
    return created


BOB_ONLY = {
    "name": "flexibleRollout",
    "title": "beta users",
    "parameters": {"rollout": "100", "stickiness": "default", "groupId": "beta"},
    "constraints": [{"contextName": "userId", "operator": "IN", "values": ["bob"]}],
}


def events(admin: httpx.Client, flag: str) -> list[str]:
    """The flag's audit events, oldest first."""
    resp = admin.get("/api/admin/search/events", params={"feature": f"IS:{flag}", "limit": "100"})
    resp.raise_for_status()
    return [e["type"] for e in sorted(resp.json()["events"], key=lambda e: e["id"])]


def tenant_values(unleash: UnleashEndpoint, flag: str) -> list[list[str]]:
    state = environment_state(unleash, flag)
    return [
        s["constraints"][0]["values"]
        for s in state["strategies"]
        if str(s.get("title", "")).startswith(TITLE)
    ]


# ----------------------------------------------------------------------------- acceptance
def test_enable_is_seen_for_acme_only_and_restore_brings_back_the_strategies_exactly(
    provider: UnleashFlagProvider, synced: str, admin: httpx.Client, unleash: UnleashEndpoint
) -> None:
    """After enable for acme the SDK says on for acme, off for globex; restore brings every strategy back."""
    add_strategy(admin, unleash, synced, BOB_ONLY)
    admin.post(f"{env_path(unleash, synced)}/on").raise_for_status()  # a person's choice: beta users see it
    before = environment_state(unleash, synced)
    snapshot = provider.snapshot(synced, "acme")

    provider.set_enabled(synced, "acme", True)

    assert app_sees_on_server(unleash, synced, "acme") is True
    assert app_sees_on_server(unleash, synced, "globex") is False
    after = environment_state(unleash, synced)
    (beta,) = [s for s in after["strategies"] if s.get("title") == "beta users"]
    assert beta in before["strategies"], "the flag's other strategy was touched"

    provider.restore(snapshot)

    assert environment_state(unleash, synced) == before  # compared as JSON
    assert app_sees_on_server(unleash, synced, "acme") is False


def test_restore_turns_the_environment_off_again_when_the_flip_turned_it_on(
    provider: UnleashFlagProvider, synced: str, unleash: UnleashEndpoint
) -> None:
    """A flag that was off in its environment is off again after restore, strategy and all as before."""
    before = environment_state(unleash, synced)
    assert before["enabled"] is False
    snapshot = provider.snapshot(synced, "acme")
    provider.set_enabled(synced, "acme", True)
    assert environment_state(unleash, synced)["enabled"] is True

    provider.restore(snapshot)

    assert environment_state(unleash, synced) == before


# ----------------------------------------------------------------------------- trap 1
def test_sync_creates_the_flag_off_with_its_tenant_strategy_before_any_environment_is_on(
    provider: UnleashFlagProvider, synced: str, admin: httpx.Client, unleash: UnleashEndpoint
) -> None:
    """Sync leaves the flag off for all; the first flip turns the environment on only after the strategy."""
    state = environment_state(unleash, synced)
    assert state["enabled"] is False
    assert tenant_values(unleash, synced) == [[PLACEHOLDER]]
    assert app_sees_on_server(unleash, synced, "anyone") is False

    provider.set_enabled(synced, "acme", True)

    history = events(admin, synced)
    assert history.index("feature-strategy-add") < history.index("feature-environment-enabled"), history
    assert app_sees_on_server(unleash, synced, "anyone") is False


def test_a_flag_without_the_tenant_strategy_is_refused_and_not_turned_on_for_everyone(
    provider: UnleashFlagProvider, admin: httpx.Client, unleash: UnleashEndpoint, flag_name: str
) -> None:
    """A flag made by hand with no strategy is refused with the sync hint; its environment stays off."""
    admin.post("/api/admin/projects/default/features", json={"name": flag_name}).raise_for_status()

    with pytest.raises(SettingsError) as raised:
        provider.set_enabled(flag_name, "acme", True)
    with pytest.raises(SettingsError):
        provider.check([flag_name])

    assert "migrate flags sync" in (raised.value.hint or "")
    assert environment_state(unleash, flag_name) == {"enabled": False, "strategies": []}
    # The trap itself: turned on as it is, the flag is on for every tenant.
    admin.post(f"{env_path(unleash, flag_name)}/on").raise_for_status()
    assert app_sees_on_server(unleash, flag_name, "anyone") is True


def test_an_off_environment_with_other_strategies_is_not_turned_on_for_one_tenant(
    provider: UnleashFlagProvider, synced: str, admin: httpx.Client, unleash: UnleashEndpoint
) -> None:
    """Turning the environment on would also turn on another strategy: refused before anything is written."""
    add_strategy(admin, unleash, synced, BOB_ONLY)
    before = environment_state(unleash, synced)

    with pytest.raises(SettingsError, match="other strategies"):
        provider.set_enabled(synced, "acme", True)

    assert environment_state(unleash, synced) == before


# ----------------------------------------------------------------------------- trap 2
def test_removing_the_last_tenant_keeps_the_strategy_and_is_off_for_everyone(
    provider: UnleashFlagProvider, synced: str, unleash: UnleashEndpoint
) -> None:
    """The last tenant's removal leaves the environment on with the strategy: off for all, others unharmed."""
    provider.set_enabled(synced, "acme", True)
    provider.set_enabled(synced, "globex", True)

    provider.set_enabled(synced, "acme", False)
    assert (app_sees_on_server(unleash, synced, "acme"), app_sees_on_server(unleash, synced, "globex")) == (
        False,
        True,
    )
    provider.set_enabled(synced, "globex", False)

    state = environment_state(unleash, synced)
    assert state["enabled"] is True, "the environment went off: a tenant turned on later would not see it"
    assert tenant_values(unleash, synced) == [[PLACEHOLDER]]
    for tenant in ("acme", "globex", "anyone"):
        assert app_sees_on_server(unleash, synced, tenant) is False
    provider.set_enabled(synced, "initech", True)
    assert app_sees_on_server(unleash, synced, "initech") is True


def test_the_server_refuses_an_empty_tenant_list(
    admin: httpx.Client, unleash: UnleashEndpoint, synced: str
) -> None:
    """Why the placeholder exists: the server answers 400 to an empty IN list."""
    (strategy,) = environment_state(unleash, synced)["strategies"]
    patch = [{"op": "replace", "path": "/constraints/0/values", "value": []}]

    resp = admin.patch(f"{env_path(unleash, synced)}/strategies/{strategy['id']}", json=patch)

    assert resp.status_code == 400


# ----------------------------------------------------------------------------- trap 4
def test_tenant_ids_differing_only_in_case_are_one_tenant(
    provider: UnleashFlagProvider, synced: str, unleash: UnleashEndpoint
) -> None:
    """'ACME' and ' acme ' are written as 'acme', once; the SDK's case-sensitive IN then matches 'acme'."""
    provider.set_enabled(synced, "ACME", True)
    assert provider.set_enabled(synced, " acme ", True).changed is False

    assert tenant_values(unleash, synced) == [["acme"]]
    assert app_sees_on_server(unleash, synced, "acme") is True
    assert provider.is_enabled(synced, "Acme") is True


def test_a_tenant_list_edited_by_hand_with_upper_case_is_refused(
    provider: UnleashFlagProvider, synced: str, admin: httpx.Client, unleash: UnleashEndpoint
) -> None:
    """A list holding 'Acme' (which would never match tenant 'acme') is refused, not silently kept."""
    (strategy,) = environment_state(unleash, synced)["strategies"]
    patch = [{"op": "replace", "path": "/constraints/0/values", "value": ["Acme"]}]
    admin.patch(f"{env_path(unleash, synced)}/strategies/{strategy['id']}", json=patch).raise_for_status()

    with pytest.raises(SettingsError, match="lower-case"):
        provider.set_enabled(synced, "globex", True)

    assert tenant_values(unleash, synced) == [["Acme"]]


# ----------------------------------------------------------------------------- trap 5
def test_more_tenants_than_one_constraint_holds_go_into_a_second_strategy(
    provider: UnleashFlagProvider, synced: str, admin: httpx.Client, unleash: UnleashEndpoint
) -> None:
    """With 250 tenants listed, the 251st goes into a second tenant strategy; restore removes it again."""
    (strategy,) = environment_state(unleash, synced)["strategies"]
    full = [f"t{i:03d}" for i in range(250)]
    patch = [{"op": "replace", "path": "/constraints/0/values", "value": full}]
    admin.patch(f"{env_path(unleash, synced)}/strategies/{strategy['id']}", json=patch).raise_for_status()
    admin.post(f"{env_path(unleash, synced)}/on").raise_for_status()
    too_many = [{"op": "replace", "path": "/constraints/0/values", "value": [*full, "t250"]}]
    assert (
        admin.patch(f"{env_path(unleash, synced)}/strategies/{strategy['id']}", json=too_many).status_code
        == 400
    )
    before = environment_state(unleash, synced)
    snapshot = provider.snapshot(synced, "t250")

    provider.set_enabled(synced, "t250", True)

    assert tenant_values(unleash, synced) == [full, ["t250"]]
    assert [provider.is_enabled(synced, t) for t in ("t000", "t249", "t250", "t251")] == [
        True,
        True,
        True,
        False,
    ]
    provider.restore(snapshot)
    assert environment_state(unleash, synced) == before


# ----------------------------------------------------------------------------- the SDK's disk cache
def test_an_unreachable_server_is_an_error_not_a_stale_disk_cache(
    unleash: UnleashEndpoint, pg_admin_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the server unreachable and a stale '~/.cache' saying on, is_enabled raises, never says True."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / ".cache"))
    stale = {
        "version": 2,
        "features": [
            {
                "name": "stale-flag",
                "enabled": True,
                "strategies": [{"name": "default", "parameters": {}, "constraints": []}],
            }
        ],
    }
    cache = FileCache("tenant-migrate")  # where the SDK's default cache for our app name lives
    cache.bootstrap_from_dict(stale)
    dead = f"http://127.0.0.1:{free_port()}"
    # The trap: a plain client with the default cache answers True from the stale file.
    plain = UnleashClient(
        f"{dead}/api",
        "tenant-migrate",
        disable_metrics=True,
        disable_registration=True,
        request_retries=0,
        multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
    )
    plain.initialize_client()
    try:
        assert plain.is_enabled("stale-flag", {"tenantId": "acme"}) is True
    finally:
        plain.destroy()
    flags = provider_for(
        UnleashEndpoint(dead, unleash.admin_token, unleash.client_token, unleash.environment, None),
        pg_admin_dsn,
        attempts=1,
        confirm_seconds=0.5,
    )

    with pytest.raises(SettingsError, match="could not fetch"):
        flags.is_enabled("stale-flag", "acme")


# ----------------------------------------------------------------------------- errors at once
def _fails_at_once(call: Any) -> SettingsError:
    started = time.monotonic()
    with capture_logs() as logs, pytest.raises(SettingsError) as raised:
        call()
    assert time.monotonic() - started < 3
    assert not [e for e in logs if e["event"] == "unleash_request_retried"], (
        "an answer that cannot change was retried"
    )
    return raised.value


def test_a_missing_flag_fails_at_once_naming_flags_sync(
    provider: UnleashFlagProvider, flag_name: str
) -> None:
    """A flag the server does not have fails without retries; the hint says to run 'migrate flags sync'."""
    error = _fails_at_once(lambda: provider.set_enabled(flag_name, "acme", True))

    assert "does not exist" in error.message
    assert "migrate flags sync" in (error.hint or "")


def test_a_client_token_used_as_admin_token_fails_at_once(
    unleash: UnleashEndpoint, pg_admin_dsn: str, synced: str
) -> None:
    """A token without admin permission (403) fails without retries and says which token to export."""
    flags = provider_for(unleash, pg_admin_dsn, admin_token=SecretStr(unleash.client_token))

    error = _fails_at_once(lambda: flags.set_enabled(synced, "acme", True))

    assert "403" in error.message and error.where == "UNLEASH_ADMIN_TOKEN"
    assert "admin API token" in (error.hint or "")
    assert unleash.client_token not in str(error) + (error.hint or ""), "a secret reached the message"


def test_a_wrong_admin_token_fails_at_once(unleash: UnleashEndpoint, pg_admin_dsn: str, synced: str) -> None:
    """A token the server does not know (401) fails without retries."""
    flags = provider_for(unleash, pg_admin_dsn, admin_token=SecretStr("*:*.not-a-real-token"))

    error = _fails_at_once(lambda: flags.check([synced]))

    assert "401" in error.message and "not-a-real-token" not in error.message


def test_an_unknown_environment_fails_at_once_listing_the_known_ones(
    unleash: UnleashEndpoint, pg_admin_dsn: str, synced: str
) -> None:
    """An environment the server lacks is named, with the environments it has in the hint."""
    flags = provider_for(unleash, pg_admin_dsn, environment="no-such-env")

    error = _fails_at_once(lambda: flags.set_enabled(synced, "acme", True))

    assert "no-such-env" in error.message
    assert unleash.environment in (error.hint or "")


def test_a_client_token_of_another_environment_is_refused(
    unleash: UnleashEndpoint, pg_admin_dsn: str, synced: str
) -> None:
    """A client token of another environment would confirm flips against the wrong one: refused at check."""
    other = unleash.client_token.replace(f":{unleash.environment}.", ":production.")
    flags = provider_for(unleash, pg_admin_dsn, client_token=SecretStr(other))

    error = _fails_at_once(lambda: flags.check([synced]))

    assert "production" in error.message and error.where == "UNLEASH_CLIENT_TOKEN"


def test_a_bad_client_token_is_an_error_when_confirming(
    unleash: UnleashEndpoint, pg_admin_dsn: str, synced: str
) -> None:
    """When the SDK cannot fetch (401), the flip is not confirmed: an error that says why, never False."""
    flags = provider_for(
        unleash, pg_admin_dsn, client_token=SecretStr("default:development.wrong"), confirm_seconds=0.5
    )

    with pytest.raises(SettingsError, match="could not fetch") as raised:
        flags.set_enabled(synced, "acme", True)

    assert "401" in raised.value.message


def test_a_flip_the_sdk_does_not_see_fails_the_check(
    unleash: UnleashEndpoint, pg_admin_dsn: str, synced: str, admin: httpx.Client
) -> None:
    """Disabling a tenant another strategy still turns on fails with CheckFailed after the bounded wait."""
    flags = provider_for(unleash, pg_admin_dsn, confirm_seconds=1.5)
    flags.set_enabled(synced, "acme", True)
    everyone = {
        "name": "flexibleRollout",
        "title": "everyone",
        "parameters": {"rollout": "100", "stickiness": "default", "groupId": "all"},
        "constraints": [],
    }
    add_strategy(admin, unleash, synced, everyone)

    with pytest.raises(CheckFailed, match="still answers on"):
        flags.set_enabled(synced, "acme", False)


# ----------------------------------------------------------------------------- retries
class FaultyProxy:
    """An HTTP proxy on 127.0.0.1 before the real server; answers the next requests as told."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: list[str] = []  # "503" or "slow", one per request, in order
        self.seen = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                proxy.seen += 1
                fault = proxy.faults.pop(0) if proxy.faults else None
                if fault == "503":
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if fault == "slow":
                    time.sleep(1.5)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")
                }
                resp = httpx.request(self.command, proxy.upstream + self.path, headers=headers, content=body)
                self.send_response(resp.status_code)
                for key, value in resp.headers.items():
                    if key.lower() not in (
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "content-encoding",
                    ):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(resp.content)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(unleash: UnleashEndpoint) -> Iterator[FaultyProxy]:
    faulty = FaultyProxy(unleash.url)
    yield faulty
    faulty.close()


def test_5xx_answers_are_retried_until_the_server_answers(
    proxy: FaultyProxy, unleash: UnleashEndpoint, pg_admin_dsn: str, synced: str
) -> None:
    """Two 503 answers in a row are retried (logged), then the flip goes through."""
    flags = provider_for(
        UnleashEndpoint(proxy.url, unleash.admin_token, unleash.client_token, unleash.environment, None),
        pg_admin_dsn,
    )
    proxy.faults = ["503", "503"]

    with capture_logs() as logs:
        change = flags.set_enabled(synced, "acme", True)

    assert change.changed
    assert [e["attempt"] for e in logs if e["event"] == "unleash_request_retried"] == [1, 2]
    assert app_sees_on_server(unleash, synced, "acme") is True


def test_a_timeout_is_retried(
    proxy: FaultyProxy, unleash: UnleashEndpoint, pg_admin_dsn: str, synced: str
) -> None:
    """A request that times out is sent again, and the flip goes through."""
    flags = provider_for(
        UnleashEndpoint(proxy.url, unleash.admin_token, unleash.client_token, unleash.environment, None),
        pg_admin_dsn,
        timeout_seconds=0.5,
    )
    proxy.faults = ["slow"]

    with capture_logs() as logs:
        flags.set_enabled(synced, "acme", True)

    retried = [e for e in logs if e["event"] == "unleash_request_retried"]
    assert len(retried) == 1 and "timed out" in retried[0]["error"].lower()


def test_a_server_that_keeps_failing_gives_up_after_the_attempts(
    proxy: FaultyProxy, unleash: UnleashEndpoint, pg_admin_dsn: str, synced: str
) -> None:
    """Persistent 503s end, after the configured attempts, in an error naming the status and the variable."""
    flags = provider_for(
        UnleashEndpoint(proxy.url, unleash.admin_token, unleash.client_token, unleash.environment, None),
        pg_admin_dsn,
        attempts=3,
    )
    proxy.faults = ["503"] * 10

    with pytest.raises(SettingsError) as raised:
        flags.set_enabled(synced, "acme", True)

    assert "HTTP 503" in raised.value.message and "3 attempt(s)" in raised.value.message
    assert raised.value.where == "UNLEASH_URL"
    assert proxy.seen == 3


# ----------------------------------------------------------------------------- playbooks
def test_flags_sync_and_status_commands(
    world: World, unleash: UnleashEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """'flags sync' creates the flag off, then finds it; 'flags status' shows each tenant's flag and phase."""
    playbook = unleash_playbook(tmp_path)
    flag = playbook_flag(playbook)
    for key, value in {**world.environ, **unleash.environ()}.items():
        monkeypatch.setenv(key, value)

    assert main(["run", str(playbook)]) == 2  # the flag is not on the server yet
    assert "migrate flags sync" in capsys.readouterr().err
    assert main(["flags", "sync", str(playbook)]) == 0
    assert f"{flag}: created, tenant strategy added" in capsys.readouterr().out
    assert main(["flags", "sync", str(playbook)]) == 0
    assert f"{flag}: already there" in capsys.readouterr().out
    assert main(["run", str(playbook), "--tenant", "acme"]) == 0
    capsys.readouterr()

    assert main(["flags", "status", str(playbook), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    rows = {t["tenant"]: (t["phase"], t["state"], t["flags"][flag]) for t in shown["tenants"]}
    assert rows["acme"] == ("cutover", "done", True)
    assert rows["globex"] == (None, "not started", False)
    assert shown["flags"][0]["environment_on"] is True and shown["flags"][0]["tenants"] == ["acme"]
    assert main(["flags", "status", str(playbook)]) == 0
    assert "tenants listed: acme" in capsys.readouterr().out


def test_a_rehearsed_cutover_on_unleash_reports_the_flip_and_leaves_the_server_as_it_was(
    world: World, unleash: UnleashEndpoint, tmp_path: Path
) -> None:
    """--dry-run on a real Unleash: the flag step says off -> on, the server's environment is unchanged and
    the SDK still sees the tenant off; the real run that follows flips it."""
    playbook = unleash_playbook(tmp_path)
    flag = playbook_flag(playbook)
    environ = {**world.environ, **unleash.environ()}
    api.flags_sync(playbook, environ=environ)
    before = environment_state(unleash, flag)
    rehearsal = api.run(playbook, ["acme"], environ=environ, dry_run=True)
    assert rehearsal.ok, rehearsal.tenants[0].error
    (step,) = [s for s in rehearsal.tenants[0].steps if s.kind == "flag"]
    assert step.outcome == "rehearsed" and (step.details["before"], step.details["after"]) == (False, True)
    assert environment_state(unleash, flag) == before
    assert app_sees_on_server(unleash, flag, "acme") is False
    assert api.run(playbook, ["acme"], environ=environ).ok
    assert app_sees_on_server(unleash, flag, "acme") is True


def _waiting_for_advisory_lock(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone()
    return bool(row and row[0])


@pytest.mark.slow
def test_unleash_stopped_mid_run_fails_the_flag_step_cleanly_and_the_next_run_resumes(
    world: World, unleash_server: UnleashServer, tmp_path: Path
) -> None:
    """The server stops while the run waits to flip: the flag step fails clearly, nothing is half-applied,
    and once the server is back 'migrate run' resumes at the flag step and succeeds."""
    playbook = unleash_playbook(tmp_path)
    flag = playbook_flag(playbook)
    endpoint = UnleashEndpoint(
        unleash_server.url,
        unleash_server.admin_token,
        unleash_server.client_token,
        unleash_server.environment,
        unleash_server,
    )
    environ = {**world.environ, **endpoint.environ()}
    api.flags_sync(playbook, environ=environ)
    before = environment_state(endpoint, flag)
    key = f"{unleash_server.url}|default|{unleash_server.environment}|{flag}"
    result: dict[str, Any] = {}
    hold = advisory_lock(lambda: psycopg.connect(world.target_dsn, autocommit=True))
    try:
        with hold(key):  # the run reaches its flag step and waits here for the flag's lock
            runner = threading.Thread(
                target=lambda: result.update(run=api.run(playbook, ["acme"], environ=environ)), daemon=True
            )
            runner.start()
            deadline = time.monotonic() + 120
            while not _waiting_for_advisory_lock(world.target_dsn):
                assert runner.is_alive() and time.monotonic() < deadline, (
                    "the run never reached the flag step"
                )
                time.sleep(0.05)
            unleash_server.stop()
        runner.join(timeout=120)

        run = result["run"]
        (tenant,) = run.tenants
        assert tenant.outcome == "failed"
        assert [s.key for s in tenant.steps if s.outcome == "applied"] == [
            "prepare/schema",
            "copy/backfill",
            "copy/validate",
        ]
        assert tenant.error is not None
        assert "did not answer" in tenant.error.message and unleash_server.url in tenant.error.message
        assert "run the same command again" in (tenant.error.hint or "")
    finally:
        if unleash_server.pid is None:
            unleash_server.start()

    assert environment_state(endpoint, flag) == before, "the failed flip left something behind"
    assert app_sees_on_server(endpoint, flag, "acme") is False
    status = {t.tenant: t for t in api.status(playbook, environ=environ).tenants}
    assert status["acme"].state == "failed"

    again = api.run(playbook, ["acme"], environ=environ)

    assert again.ok, again.tenants[0].error
    # The earlier validation is not trusted across the stop: it runs again, then the flag flips.
    assert [s.key for s in again.tenants[0].steps if s.outcome == "applied"] == [
        "copy/validate",
        "cutover/flag",
    ]
    assert app_sees_on_server(endpoint, flag, "acme") is True
    assert app_sees_on_server(endpoint, flag, "globex") is False
    rolled = api.rollback(playbook, "acme", "pre-cutover", environ=environ, discard_writes_since_cutover=True)
    # Its writes since the cut-over discarded: the copy is reverted too.
    assert [s.key for s in rolled.steps] == ["cutover/flag", "copy/validate", "copy/backfill"]
    assert environment_state(endpoint, flag) == before


# ----------------------------------------------------------------------------- the playbook block
def test_an_unleash_flags_block_loads_and_file_playbooks_stay_valid(tmp_path: Path) -> None:
    """'provider: unleash' loads with its defaults; 'provider: file' and no 'flags:' at all still load."""
    from migrate.playbook import load_playbook
    from migrate.playbook.model import FileFlags, UnleashFlags

    unleash = load_playbook(unleash_playbook(tmp_path)).playbook.flags
    assert isinstance(unleash, UnleashFlags)
    assert (unleash.url_env, unleash.admin_token_env, unleash.client_token_env) == (
        "UNLEASH_URL",
        "UNLEASH_ADMIN_TOKEN",
        "UNLEASH_CLIENT_TOKEN",
    )
    assert isinstance(load_playbook(DEMO).playbook.flags, FileFlags)
    text = DEMO.read_text()
    bare = tmp_path / "bare.yaml"
    bare.write_text(text[: text.index("flags:\n")] + text[text.index("phases:\n") :])
    assert isinstance(load_playbook(bare).playbook.flags, FileFlags)


def test_an_unknown_flag_provider_is_a_playbook_error_naming_the_line(tmp_path: Path) -> None:
    """'provider: unlesh' is refused at load (exit 2) with its line and both providers in the message."""
    from migrate.errors import PlaybookError
    from migrate.playbook import load_playbook

    path = unleash_playbook(tmp_path)
    path.write_text(path.read_text().replace("provider: unleash", "provider: unlesh"))

    with pytest.raises(PlaybookError) as raised:
        load_playbook(path)

    assert "provider: unleash" in raised.value.message
    assert raised.value.where is not None and raised.value.where.startswith(f"{path}:")


def test_a_missing_unleash_variable_names_the_playbook_line(world: World, tmp_path: Path) -> None:
    """Without UNLEASH_URL a run stops before any step, naming the variable and the playbook's line."""
    environ = {k: v for k, v in world.environ.items() if not k.startswith("UNLEASH_")}

    with pytest.raises(SettingsError) as raised:
        api.run(unleash_playbook(tmp_path), ["acme"], environ=environ)

    assert "UNLEASH_URL" in raised.value.message
    assert raised.value.where is not None and ":" in raised.value.where


def test_a_flip_leaves_no_sdk_thread_running(provider: UnleashFlagProvider, synced: str) -> None:
    """After a flip and its confirmation, no thread the SDK started (scheduler, fetches) is still alive."""
    before = set(threading.enumerate())

    provider.set_enabled(synced, "acme", True)
    assert provider.is_enabled(synced, "acme") is True

    assert set(threading.enumerate()) - before == set()
