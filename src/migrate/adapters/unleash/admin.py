"""The Unleash Admin API: one flag's environment as read, the writes, and errors with their fix.

Calls that can be repeated safely are retried (tenacity: full jitter, capped) on
timeouts, refused or dropped connections and 5xx; a 401, 403 or 404 fails at once.
A POST that creates something is sent once: a retry after a lost answer could
create it twice, and the next read finds it instead.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from migrate.adapters.flagfile import TENANT_CONTEXT
from migrate.errors import SettingsError
from migrate.log import get_logger

PROVIDER = "unleash"
TITLE = "tenant-migrate: tenants"
"""Title of the strategies tenant-migrate owns; the second and later ones add `` (N)``."""
PLACEHOLDER = "(none)"
"""Written for an empty list: the server refuses ``IN []``; no tenant id can be this."""

_REVISION_EVENTS = frozenset(
    {
        "feature-created",
        "feature-strategy-add",
        "feature-strategy-update",
        "feature-strategy-remove",
        "feature-environment-enabled",
        "feature-environment-disabled",
    }
)
"""The events tenant-migrate's writes make; each moves the environment's revision."""


@dataclass(frozen=True)
class UnleashSettings:
    """Where the server is and how to talk to it; the ``*_var`` names appear in messages."""

    url: str
    admin_token: SecretStr
    client_token: SecretStr
    environment: str
    project: str = "default"
    confirm_seconds: float = 10.0
    timeout_seconds: float = 10.0
    attempts: int = 4
    values_per_strategy: int = 250
    url_var: str = "UNLEASH_URL"
    admin_token_var: str = "UNLEASH_ADMIN_TOKEN"
    client_token_var: str = "UNLEASH_CLIENT_TOKEN"
    sync_command: str = "migrate flags sync PLAYBOOK"

    @property
    def base_url(self) -> str:
        """The server's root: users write it with or without a trailing ``/api``."""
        return self.url.strip().rstrip("/").removesuffix("/api")


class GuardFailed(Exception):
    """The guarded patch found another list than the one read: someone else wrote."""


class _Transient(Exception):
    """A timeout, a refused or dropped connection, or a 5xx: worth another try."""


def describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def server_message(resp: httpx.Response) -> str:
    """The server's own words for a refusal (never a secret), first line only."""
    try:
        message = resp.json().get("message")
    except (ValueError, AttributeError):
        message = None
    text = message if isinstance(message, str) and message else resp.text
    return text.strip().splitlines()[0][:300] if text.strip() else resp.reason_phrase


def values(strategy: Mapping[str, Any]) -> list[str]:
    found: list[str] = strategy["constraints"][0]["values"]
    return found


def real(listed: Sequence[str]) -> list[str]:
    """A tenant list without the placeholder."""
    return [v for v in listed if v != PLACEHOLDER]


def owned(strategy: Mapping[str, Any]) -> bool:
    return str(strategy.get("title") or "").startswith(TITLE)


def strategy_body(flag: str, title: str, tenants: Sequence[str]) -> dict[str, Any]:
    return {
        "name": "flexibleRollout",
        "title": title,
        "parameters": {"rollout": "100", "stickiness": "default", "groupId": flag},
        "constraints": [
            {
                "contextName": TENANT_CONTEXT,
                "operator": "IN",
                "values": sorted(tenants) or [PLACEHOLDER],
                "inverted": False,
                "caseInsensitive": False,
            }
        ],
        "segments": [],
        "disabled": False,
    }


@dataclass
class FlagEnv:
    """One flag's environment as read: on or off, every strategy, and the tenant ones."""

    enabled: bool
    strategies: list[dict[str, Any]]
    shards: list[dict[str, Any]]  # the tenant strategies, the first one first

    @property
    def tenants(self) -> set[str]:
        return {v for s in self.shards for v in real(values(s))}

    def holder(self, tenant: str) -> dict[str, Any] | None:
        return next((s for s in self.shards if tenant in values(s)), None)

    def others_live(self) -> list[dict[str, Any]]:
        """The flag's other strategies that apply while the environment is on."""
        return [s for s in self.strategies if not owned(s) and not s.get("disabled")]


class AdminApi:
    """The Admin API calls tenant-migrate makes, for one project and environment."""

    def __init__(self, settings: UnleashSettings, *, transport: httpx.BaseTransport | None = None) -> None:
        self.s = settings
        self._log = get_logger()
        self._http = httpx.Client(
            base_url=settings.base_url,
            headers={"Authorization": settings.admin_token.get_secret_value()},
            timeout=settings.timeout_seconds,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def feature_path(self, flag: str) -> str:
        return f"/api/admin/projects/{self.s.project}/features/{flag}"

    def env_path(self, flag: str) -> str:
        return f"{self.feature_path(flag)}/environments/{self.s.environment}"

    # -- reading -------------------------------------------------------------------

    def exists(self, flag: str) -> bool:
        resp = self.request("GET", self.feature_path(flag))
        if resp.status_code not in (200, 404):
            raise self.refused(resp, f"read flag {flag!r}")
        return resp.status_code == 200

    def read(self, flag: str) -> FlagEnv:
        resp = self.request("GET", self.feature_path(flag))
        if resp.status_code == 404:
            raise SettingsError(
                f"flag {flag!r} does not exist in project {self.s.project!r} on {self.s.base_url}",
                where=self.s.url_var,
                hint=f"run '{self.s.sync_command}': it creates missing flags, off for every tenant",
            )
        if resp.status_code != 200:
            raise self.refused(resp, f"read flag {flag!r}")
        envs = resp.json().get("environments", [])
        env = next((e for e in envs if e.get("name") == self.s.environment), None)
        if env is None:
            self.check_environment()
            raise SettingsError(
                f"environment {self.s.environment!r} is not enabled in project {self.s.project!r}",
                where=self.s.url_var,
                hint="enable it for the project in Unleash (Projects → Settings → Environments)",
            )
        strategies = sorted(
            env.get("strategies", []), key=lambda s: (s.get("sortOrder", 0), str(s.get("id")))
        )
        shards = [s for s in strategies if owned(s)]
        for shard in shards:
            self._check_shape(flag, shard)
        # "tenant-migrate: tenants" first, then " (2)", " (3)", … in number order.
        shards.sort(key=lambda s: (len(str(s.get("title"))), str(s.get("title"))))
        return FlagEnv(enabled=bool(env.get("enabled")), strategies=strategies, shards=shards)

    def latest_revision(self, flag: str) -> int | None:
        """The id of the newest event our writes make on the flag in the environment.

        The client API serves a change once its ``meta.revisionId`` reaches that id. Only
        event types the server counts towards the environment's revision are taken (a
        later "favorited" or another environment's event would never be reached).
        """
        resp = self.request(
            "GET", "/api/admin/search/events", params={"feature": f"IS:{flag}", "limit": "20", "offset": "0"}
        )
        if resp.status_code != 200:
            return None  # older servers: confirmation then rests on the SDK's answer alone
        ids = [
            e["id"]
            for e in resp.json().get("events") or []
            if isinstance(e.get("id"), int)
            and e.get("type") in _REVISION_EVENTS
            and e.get("environment") in (self.s.environment, None)
        ]
        return max(ids) if ids else None

    def check_environment(self) -> None:
        resp = self.request("GET", "/api/admin/environments")
        if resp.status_code != 200:
            raise self.refused(resp, "list the environments")
        names = [e.get("name") for e in resp.json().get("environments", []) if e.get("enabled", True)]
        if self.s.environment not in names:
            raise SettingsError(
                f"environment {self.s.environment!r} does not exist on {self.s.base_url}",
                where=self.s.url_var,
                hint=f"write one of {', '.join(map(str, names))} as 'environment:' in the playbook's "
                "'flags:' block (or in the variable it names)",
            )

    def _check_shape(self, flag: str, strategy: Mapping[str, Any]) -> None:
        """A tenant strategy changed by hand may no longer mean 'exactly these tenants'."""

        def refuse(problem: str) -> SettingsError:
            return SettingsError(
                f"flag {flag!r}, strategy {strategy.get('title')!r} in {self.s.environment!r}: {problem}",
                where=self.s.url_var,
                hint="make it flexibleRollout at 100 % with exactly one constraint tenantId IN "
                f"[lower-case tenant ids] again, or delete it and run '{self.s.sync_command}' "
                "(see flags/README.md)",
            )

        rollout = str((strategy.get("parameters") or {}).get("rollout"))
        if strategy.get("name") != "flexibleRollout" or rollout != "100":
            raise refuse("it must be flexibleRollout at rollout 100")
        if strategy.get("disabled") or strategy.get("segments"):
            raise refuse("it must not be disabled or use segments")
        constraints = strategy.get("constraints")
        if not isinstance(constraints, list) or len(constraints) != 1:
            raise refuse("it needs exactly one constraint")
        c = constraints[0]
        if (
            c.get("contextName") != TENANT_CONTEXT
            or c.get("operator") != "IN"
            or c.get("inverted")
            or c.get("caseInsensitive")
        ):
            raise refuse("its constraint must be tenantId IN […], not inverted, case-sensitive")
        listed = c.get("values")
        if not isinstance(listed, list) or not all(isinstance(v, str) for v in listed):
            raise refuse("its constraint's values must be a list of tenant ids")
        if len(set(listed)) != len(listed) or any(
            v != PLACEHOLDER and v != v.strip().lower() for v in listed
        ):
            # IN matches exactly: "Acme" never turns on tenant "acme" (trap 4).
            raise refuse("tenant ids must be lower-case, without spaces, each listed once")

    # -- writing -------------------------------------------------------------------

    def write_values(self, flag: str, strategy: Mapping[str, Any], tenants: Sequence[str]) -> None:
        """Replace the whole list, guarded by a test of the list read (trap 3)."""
        new = sorted(set(tenants)) or [PLACEHOLDER]
        path = "/constraints/0/values"
        body = [
            {"op": "test", "path": path, "value": values(strategy)},
            {"op": "replace", "path": path, "value": new},
        ]
        resp = self.request("PATCH", f"{self.env_path(flag)}/strategies/{strategy['id']}", body=body)
        if resp.status_code != 200:
            raise self.refused(resp, f"change the tenant list of flag {flag!r}")

    def add_strategy(self, flag: str, title: str, tenants: Sequence[str], *, why: str = "") -> None:
        resp = self.request(
            "POST",
            f"{self.env_path(flag)}/strategies",
            body=strategy_body(flag, title, tenants),
            idempotent=False,
        )
        if resp.status_code != 200:
            raise self.refused(resp, f"add strategy {title!r} to flag {flag!r}{why}")
        self._log.info("flag_strategy_added", flag=flag, environment=self.s.environment, title=title)

    def delete_strategy(self, flag: str, strategy: Mapping[str, Any]) -> None:
        resp = self.request("DELETE", f"{self.env_path(flag)}/strategies/{strategy['id']}")
        if resp.status_code not in (200, 404):  # 404: gone already (a retried delete)
            raise self.refused(resp, f"delete strategy {strategy.get('title')!r} of flag {flag!r}")

    def switch(self, flag: str, on: bool) -> None:
        """Turn the flag's environment on or off (idempotent)."""
        resp = self.request("POST", f"{self.env_path(flag)}/{'on' if on else 'off'}")
        if resp.status_code != 200:
            state = "on" if on else "off"
            raise self.refused(resp, f"turn {state} environment {self.s.environment!r} of flag {flag!r}")

    def create_flag(self, flag: str, description: str, kind: str) -> None:
        body = {"name": flag, "description": description, "type": kind}
        resp = self.request(
            "POST", f"/api/admin/projects/{self.s.project}/features", body=body, idempotent=False
        )
        if resp.status_code not in (200, 201, 409):  # 409: created meanwhile
            raise self.refused(resp, f"create flag {flag!r}")
        self._log.info("flag_created", flag=flag, project=self.s.project)

    # -- HTTP ----------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        params: Mapping[str, str] | None = None,
        idempotent: bool = True,
    ) -> httpx.Response:
        """One call; safe ones are retried on timeouts, lost connections and 5xx."""

        def once() -> httpx.Response:
            try:
                resp = self._http.request(method, path, json=body, params=params)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                raise _Transient(describe(exc)) from exc
            if resp.status_code >= 500:
                if "TEST_OPERATION_FAILED" in resp.text:
                    raise GuardFailed
                raise _Transient(f"HTTP {resp.status_code}: {server_message(resp)}")
            return resp

        def retried(state: RetryCallState) -> None:
            outcome = state.outcome.exception() if state.outcome else None
            self._log.warning(
                "unleash_request_retried",
                method=method,
                path=path,
                attempt=state.attempt_number,
                error=str(outcome),
            )

        tries = self.s.attempts if idempotent else 1
        started = time.monotonic()
        retrying = Retrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_after_attempt(tries),
            wait=wait_random_exponential(multiplier=0.25, max=2.0),  # full jitter, capped
            before_sleep=retried,
            reraise=True,
        )
        try:
            return retrying(once)
        except _Transient as exc:
            raise SettingsError(
                f"Unleash at {self.s.base_url} did not answer {method} {path}: {exc} "
                f"({tries} attempt(s) in {time.monotonic() - started:.1f} s)",
                where=self.s.url_var,
                hint=f"check that the server runs and {self.s.url_var} points at it; flips are "
                "idempotent: run the same command again once it answers",
            ) from exc

    def refused(self, resp: httpx.Response, what: str) -> SettingsError:
        """A 4xx as an error that says which setting to fix."""
        message = server_message(resp)
        var = self.s.admin_token_var
        if resp.status_code == 401:
            return SettingsError(
                f"Unleash refused the admin token in {var} (401: {message})",
                where=var,
                hint=f"export {var} with an admin API token of {self.s.base_url} "
                "(Unleash: Admin settings → API access)",
            )
        if resp.status_code == 403:
            return SettingsError(
                f"the token in {var} may not {what} (403: {message})",
                where=var,
                hint=f"export {var} with an admin API token ('*:*.…'), not a client or frontend token",
            )
        if resp.status_code == 400 and "limit" in message.lower():
            return SettingsError(
                f"Unleash refused to {what}: {message}",
                where=self.s.url_var,
                hint="raise the server's limit (UNLEASH_CONSTRAINT_VALUES_LIMIT, "
                "UNLEASH_FEATURE_ENVIRONMENT_STRATEGIES_LIMIT) or lower flags.values_per_strategy",
            )
        return SettingsError(
            f"Unleash refused to {what} (HTTP {resp.status_code}: {message})",
            where=self.s.url_var,
            hint="the server's log says more",
        )
