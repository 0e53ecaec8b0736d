"""What the application sees: the official SDK against the server's client API.

Each probe is a new ``UnleashClient`` with an in-memory cache that it fills with
one fetch: no answer can come from an earlier run's disk cache (the SDK's default
lives in ``~/.cache`` and is used silently when a fetch fails), and a probe whose
fetch failed is an error, never False. Polling only: streaming answers 404 on the
open-source server, after which every flag silently reads False.

The server publishes changes to its client API once a second, so a flip is
confirmed by probing until the served revision includes the write and the SDK
gives the wanted answer, within ``confirm_seconds``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

# The SDK re-exports its client without __all__, which strict mypy reads as private.
from UnleashClient import UnleashClient  # type: ignore[attr-defined]
from UnleashClient.cache import BaseCache
from UnleashClient.constants import FEATURES_URL
from UnleashClient.utils import InstanceAllowType

from migrate.adapters.flagfile import TENANT_CONTEXT
from migrate.adapters.unleash.admin import UnleashSettings, describe, server_message
from migrate.errors import CheckFailed, FlagStateUnknown, SettingsError
from migrate.log import get_logger

_APP_NAME = "tenant-migrate"
_PROBE_PAUSE = 0.2  # seconds between probes while waiting for the client API


class CouldNotFetch(Exception):
    """The SDK could not fetch the flags from the client API."""


class _MemoryCache(BaseCache):
    """The SDK's cache, in memory and new for each probe: no earlier state can answer."""

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self.fetched = threading.Event()

    def set(self, key: str, value: Any) -> None:
        self._data[key] = value
        if key == FEATURES_URL:  # written only by a successful fetch (no bootstrap here)
            self.fetched.set()

    def mset(self, data: dict[str, Any]) -> None:
        self._data.update(data)

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def exists(self, key: str) -> bool:
        return key in self._data

    def destroy(self) -> None:
        self._data.clear()


@dataclass(frozen=True)
class Probe:
    """One fetch's answers."""

    known: bool  # the client API serves the flag
    answers: dict[str, bool]  # per tenant
    revision: int | None  # the revision the client API served (meta.revisionId)


class Sdk:
    """Evaluates flags exactly as an application with the client token does."""

    def __init__(self, settings: UnleashSettings) -> None:
        self.s = settings
        self._log = get_logger()

    def probe(self, flag: str, tenants: Sequence[str]) -> Probe:
        cache = _MemoryCache()
        client = UnleashClient(
            url=f"{self.s.base_url}/api",
            app_name=_APP_NAME,
            refresh_interval=1,
            # No probe outlasts the confirmation window: a slow server is an unconfirmed flip, in time.
            request_timeout=max(1, int(min(self.s.timeout_seconds, self.s.confirm_seconds))),
            request_retries=0,
            disable_metrics=True,
            disable_registration=True,
            custom_headers={"Authorization": self.s.client_token.get_secret_value()},
            cache=cache,
            experimental_mode={"type": "polling"},  # said out loud: never streaming
            multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
        )
        try:
            client.initialize_client()  # fetches once before it returns
            if not cache.fetched.is_set():
                raise CouldNotFetch("the SDK fetched nothing")
            known = flag in client.feature_definitions()
            answers = {t: bool(client.is_enabled(flag, {TENANT_CONTEXT: t})) for t in tenants}
            return Probe(known, answers, _revision(cache.get(FEATURES_URL)))
        finally:
            client.destroy()

    def check_fetch(self) -> None:
        """The client API with the client token, directly: the SDK does not say why it failed."""
        try:
            resp = httpx.get(
                f"{self.s.base_url}/api/client/features",
                headers={"Authorization": self.s.client_token.get_secret_value()},
                timeout=self.s.timeout_seconds,
            )
        except httpx.HTTPError as exc:
            raise CouldNotFetch(describe(exc)) from exc
        if resp.status_code != 200:
            raise CouldNotFetch(f"HTTP {resp.status_code}: {server_message(resp)}")

    def fetch_error(self, exc: CouldNotFetch) -> SettingsError:
        reason = str(exc)
        if reason == "the SDK fetched nothing":
            try:
                self.check_fetch()
            except CouldNotFetch as why:
                reason = str(why)
        hint = f"check that the server answers at {self.s.url_var}"
        if "401" in reason or "403" in reason:
            hint = f"export a client API token of environment {self.s.environment!r}"
            hint += f" in {self.s.client_token_var}"
        return SettingsError(
            f"the Unleash SDK could not fetch flags from {self.s.base_url}/api/client/features: {reason}",
            where=self.s.client_token_var,
            hint=hint,
        )

    def confirm(self, flag: str, tenant: str, wanted: bool | None, revision: int | None) -> None:
        """Wait (bounded) until the client API serves ``revision`` and the SDK answers ``wanted``.

        ``wanted`` None: other strategies decide what the tenant sees; only wait for the write.
        """
        started = time.monotonic()
        deadline = started + self.s.confirm_seconds
        probes = 0
        while True:
            probes += 1
            failure: CouldNotFetch | None = None
            probe: Probe | None = None
            try:
                probe = self.probe(flag, [tenant])
            except CouldNotFetch as exc:
                failure = exc
            done = probe is not None and probe.known and _caught_up(probe, revision)
            if done and probe is not None and (wanted is None or probe.answers[tenant] is wanted):
                seconds = round(time.monotonic() - started, 3)
                self._log.debug("flag_confirmed", flag=flag, tenant=tenant, seconds=seconds)
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(_PROBE_PAUSE)
        waited = f"{self.s.confirm_seconds:g} s ({probes} probes)"
        refused = self.fetch_error(failure) if failure is not None else None
        if refused is not None and any(code in refused.message for code in ("HTTP 401", "HTTP 403")):
            raise refused  # a token the client API refuses: a setting to fix, not a slow server
        if failure is not None or (probe is not None and probe.known and not _caught_up(probe, revision)):
            # The Admin API took the write; the application's view could not be read back in time.
            why = (
                refused.message
                if refused is not None
                else f"the client API still served revision {probe.revision if probe else '?'}, "
                f"the flip is {revision}"
            )
            raise FlagStateUnknown(
                f"the Unleash SDK could not confirm the flip within {waited}: {why}",
                where=f"flag {flag} in {self.s.environment}",
                hint="the write was made; whether the application sees it yet is unknown",
            )
        assert probe is not None
        state = (
            "does not know the flag"
            if not probe.known
            else f"still answers {'on' if probe.answers[tenant] else 'off'}"
        )
        raise CheckFailed(
            f"the Unleash SDK {state} for tenant {tenant!r} after {waited}, though the Admin API "
            "shows the flip",
            where=f"flag {flag} in {self.s.environment}",
            hint="another strategy of the flag may decide for this tenant ('migrate flags status "
            "PLAYBOOK'), or the client token may be of another project or environment",
        )


def _caught_up(probe: Probe, revision: int | None) -> bool:
    return revision is None or probe.revision is None or probe.revision >= revision


def _revision(raw: object) -> int | None:
    """``meta.revisionId`` of a client-features body (Unleash 5+), if it has one."""
    if not isinstance(raw, str):
        return None
    try:
        meta = json.loads(raw).get("meta") or {}
    except (ValueError, AttributeError):
        return None
    revision = meta.get("revisionId") if isinstance(meta, dict) else None
    return revision if isinstance(revision, int) else None
