"""The Unleash flag provider: flips, snapshots and restores of one tenant, and ``flags sync``.

A flip, under the flag's lock (``lock.py``): read the environment, check the
environment may be turned on (before any write: all or nothing), list or unlist the
tenant (one guarded write), turn the environment on if it was off, read back. A
write that lost a race (the guard failed) starts the round again. Then, outside the
lock, the SDK must agree (``sdk.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from migrate.adapters.flagfile import FlagDefinition
from migrate.adapters.unleash.admin import (
    PROVIDER,
    TITLE,
    AdminApi,
    FlagEnv,
    GuardFailed,
    UnleashSettings,
    owned,
    real,
    values,
)
from migrate.adapters.unleash.lock import FlagLock
from migrate.adapters.unleash.sdk import CouldNotFetch, Sdk
from migrate.errors import ArgumentError, SettingsError, StepFailed
from migrate.log import get_logger
from migrate.names import check_tenant_id
from migrate.ports import FlagChange, FlagSnapshot, FlagTarget

_WRITE_ATTEMPTS = 5  # read-modify-write rounds when another writer got in between


@dataclass(frozen=True)
class FlagInfo:
    """A flag in the environment, as the Admin API shows it (for ``migrate flags status``)."""

    flag: str
    environment: str
    environment_on: bool
    tenants: tuple[str, ...]
    tenant_strategies: int
    other_strategies: int


@dataclass(frozen=True)
class SyncedFlag:
    """What ``migrate flags sync`` did to one flag."""

    flag: str
    actions: tuple[str, ...]  # e.g. ("created", "tenant strategy added"); empty: up to date


def unleash_target(url: str, project: str, environment: str) -> FlagTarget:
    """The target of an Unleash environment: the server (never its credentials), project, environment."""
    parts = urlsplit(url.strip().rstrip("/").removesuffix("/api"))
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    server = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return {"provider": PROVIDER, "url": server, "project": project, "environment": environment}


def _normalise(tenant: str) -> str:
    """Lower-cased and stripped, because ``IN`` matches exactly (trap 4)."""
    try:
        return check_tenant_id(tenant.strip().lower())
    except ValueError as exc:
        raise ArgumentError(str(exc), where=f"tenant {tenant!r}") from exc


class UnleashFlagProvider:
    """Per-tenant flags on an Unleash server (``FlagProvider``)."""

    def __init__(
        self, settings: UnleashSettings, *, lock: FlagLock, transport: httpx.BaseTransport | None = None
    ) -> None:
        self._s = settings
        self._lock = lock
        self._admin = AdminApi(settings, transport=transport)
        self._sdk = Sdk(settings)
        self._log = get_logger()

    @property
    def settings(self) -> UnleashSettings:
        return self._s

    def close(self) -> None:
        self._admin.close()

    def target(self) -> FlagTarget:
        return unleash_target(self._s.base_url, self._s.project, self._s.environment)

    # -- the FlagProvider protocol -------------------------------------------------

    def is_enabled(self, flag: str, tenant: str) -> bool:
        """What the application sees for this tenant: the SDK against the client API."""
        tenant_id = _normalise(tenant)
        return self.evaluate(flag, [tenant_id])[tenant_id]

    def set_enabled(self, flag: str, tenant: str, enabled: bool) -> FlagChange:
        """List or unlist the tenant, turn the environment on if needed, confirm with the SDK."""
        tenant_id = _normalise(tenant)
        before, revision = self._locked_write(flag, tenant_id, enabled, None)
        change = FlagChange(flag=flag, tenant=tenant_id, before=before, after=enabled)
        if change.changed:
            self._log.info(
                "flag_flipped",
                flag=flag,
                tenant=tenant_id,
                environment=self._s.environment,
                before=before,
                after=enabled,
            )
        self._sdk.confirm(flag, tenant_id, enabled, revision)
        return change

    def snapshot(self, flag: str, tenant: str) -> FlagSnapshot:
        """The environment's on/off and every strategy in it, as the Admin API has them."""
        tenant_id = _normalise(tenant)
        env = self._admin.read(flag)
        listed = tenant_id in env.tenants
        return FlagSnapshot(
            provider=PROVIDER,
            flag=flag,
            tenant=tenant_id,
            enabled=listed and env.enabled,
            state={
                "project": self._s.project,
                "environment": self._s.environment,
                "environment_on": env.enabled,
                "listed": listed,
                "strategies": env.strategies,
            },
        )

    def restore(self, snapshot: FlagSnapshot) -> FlagChange:
        """Put the tenant back as recorded; with no flip in between, every strategy as it was."""
        if snapshot.provider != PROVIDER or snapshot.state.get("environment") != self._s.environment:
            raise SettingsError(
                f"the snapshot of flag {snapshot.flag!r} was taken by the {snapshot.provider} provider "
                f"in environment {snapshot.state.get('environment')!r}; this playbook flips "
                f"{self._s.environment!r} on Unleash",
                where=self._s.url_var,
                hint="restore with the 'flags:' settings the step ran with",
            )
        tenant_id = _normalise(snapshot.tenant)
        listed = bool(snapshot.state.get("listed", snapshot.enabled))
        before, revision = self._locked_write(snapshot.flag, tenant_id, listed, snapshot)
        change = FlagChange(flag=snapshot.flag, tenant=tenant_id, before=before, after=snapshot.enabled)
        if change.changed:
            self._log.info(
                "flag_restored",
                flag=snapshot.flag,
                tenant=tenant_id,
                environment=self._s.environment,
                before=before,
                after=snapshot.enabled,
            )
        env = self._admin.read(snapshot.flag)
        # With other live strategies, they too decide what the tenant sees: wait for the write only.
        wanted = None if env.others_live() else listed and env.enabled
        self._sdk.confirm(snapshot.flag, tenant_id, wanted, revision)
        return change

    # -- what the application sees, and the Admin API's view -----------------------

    def evaluate(self, flag: str, tenants: Sequence[str]) -> dict[str, bool]:
        """What the SDK answers for each tenant (normalised ids), from one fetch."""
        tenant_ids = [_normalise(t) for t in tenants]
        try:
            probe = self._sdk.probe(flag, tenant_ids)
        except CouldNotFetch as exc:
            raise self._sdk.fetch_error(exc) from exc
        if not probe.known:
            self._admin.read(flag)  # a missing flag or environment says so, with its fix
            raise SettingsError(
                f"the client token in {self._s.client_token_var} does not see flag {flag!r}",
                where=self._s.client_token_var,
                hint=f"export a client token of project {self._s.project!r} and environment "
                f"{self._s.environment!r}",
            )
        return probe.answers

    def describe(self, flag: str) -> FlagInfo:
        env = self._admin.read(flag)
        return FlagInfo(
            flag=flag,
            environment=self._s.environment,
            environment_on=env.enabled,
            tenants=tuple(sorted(env.tenants)),
            tenant_strategies=len(env.shards),
            other_strategies=len(env.strategies) - len(env.shards),
        )

    # -- start-up checks and sync --------------------------------------------------

    def check(self, flags: Sequence[str]) -> None:
        """Fail now, with the fix, on a wrong token or environment, or a flag not synced yet."""
        self._admin.check_environment()
        self._check_client_token()
        for flag in flags:
            if not self._admin.read(flag).shards:
                raise self._no_tenant_strategy(flag)

    def _check_client_token(self) -> None:
        # Unleash tokens read "<project>:<environment>.<secret>": a token of another
        # environment would make the SDK confirm flips against the wrong one.
        token = self._s.client_token.get_secret_value()
        match = re.match(r"^[^:.\s]+:([^.\s]+)\.", token)
        if match and match[1] not in (self._s.environment, "*"):
            raise SettingsError(
                f"the client token in {self._s.client_token_var} is for environment {match[1]!r}, "
                f"not {self._s.environment!r}: the SDK would confirm flips against the wrong environment",
                where=self._s.client_token_var,
                hint=f"export a client token of environment {self._s.environment!r}",
            )
        try:
            self._sdk.check_fetch()
        except CouldNotFetch as exc:
            raise self._sdk.fetch_error(exc) from exc

    def sync(self, definitions: Sequence[FlagDefinition]) -> list[SyncedFlag]:
        """Create missing flags, off, with the tenant strategy in the environment; never turn one on."""
        self._admin.check_environment()
        out = []
        for definition in definitions:
            with self._lock(self._lock_key(definition.name)):
                out.append(SyncedFlag(definition.name, tuple(self._sync_one(definition))))
        for synced in out:
            if synced.actions:  # the application's SDK must know the flag before a run flips it
                self._sdk.confirm(synced.flag, "", None, self._admin.latest_revision(synced.flag))
        return out

    def _sync_one(self, definition: FlagDefinition) -> Iterator[str]:
        flag = definition.name
        if not self._admin.exists(flag):
            self._admin.create_flag(flag, definition.description, definition.type)
            yield "created"
        env = self._admin.read(flag)
        if env.shards:
            return
        if env.enabled and not env.strategies:
            # On for everyone already (trap 1): a tenant strategy would turn everyone else off.
            raise SettingsError(
                f"flag {flag!r} is on for everyone in environment {self._s.environment!r} "
                "(enabled, no strategy); adding the tenant strategy would turn it off for all others",
                where=self._s.url_var,
                hint="decide who should have it: add a strategy for them, then sync again",
            )
        # The environment stays as it is (a new flag: off); the first flip turns it on.
        self._admin.add_strategy(flag, TITLE, [])
        yield "tenant strategy added"

    # -- writing -------------------------------------------------------------------

    def _lock_key(self, flag: str) -> str:
        return f"{self._s.base_url}|{self._s.project}|{self._s.environment}|{flag}"

    def _locked_write(
        self, flag: str, tenant: str, listed: bool, snapshot: FlagSnapshot | None
    ) -> tuple[bool, int | None]:
        """Under the flag's lock: read, write, read back.

        Returns whether the tenant was on before, and the revision of the write (None
        when nothing had to change), which the client API must reach before the SDK is asked.
        """
        with self._lock(self._lock_key(flag)):
            for _ in range(_WRITE_ATTEMPTS):
                env = self._admin.read(flag)
                before = tenant in env.tenants and env.enabled
                if listed and not env.enabled:
                    self._check_can_turn_on(flag, env)  # before any write: all or nothing
                try:
                    wrote = self._write(flag, env, tenant, listed, snapshot)
                except GuardFailed:
                    continue  # another writer got in between: read again
                after = self._admin.read(flag)
                if (tenant in after.tenants) == listed and (after.enabled or not listed):
                    return before, self._admin.latest_revision(flag) if wrote else None
            raise StepFailed(
                f"flag {flag!r} in environment {self._s.environment!r} kept changing while tenant "
                f"{tenant!r} was flipped ({_WRITE_ATTEMPTS} attempts)",
                hint="someone else is editing the flag's tenant strategy (in the Unleash UI?); "
                "run again when they are done",
            )

    def _write(
        self, flag: str, env: FlagEnv, tenant: str, listed: bool, snapshot: FlagSnapshot | None
    ) -> bool:
        """The writes of one round; whether anything was written."""
        wrote = False
        if snapshot is not None:
            wrote = self._restore_exactly(flag, env, tenant, listed, snapshot)
        if wrote is False and (tenant in env.tenants) != listed:
            self._list(flag, env, tenant, listed)
            wrote = True
        if listed and not env.enabled:
            self._admin.switch(flag, on=True)
            wrote = True
        if snapshot is not None and not listed and not snapshot.state.get("environment_on", True):
            # It was off before the flip turned it on: off again, if no one else would notice.
            now = self._admin.read(flag)
            if now.enabled and not now.tenants and not now.others_live():
                self._admin.switch(flag, on=False)
                wrote = True
        return wrote

    def _list(self, flag: str, env: FlagEnv, tenant: str, listed: bool) -> None:
        holder = env.holder(tenant)
        if listed and holder is None:
            room = next((s for s in env.shards if len(real(values(s))) < self._s.values_per_strategy), None)
            if room is not None:
                self._admin.write_values(flag, room, [*real(values(room)), tenant])
            else:
                # Every tenant strategy is full (trap 5): the list goes on in another one, ORed.
                self._admin.add_strategy(
                    flag,
                    f"{TITLE} ({len(env.shards) + 1})",
                    [tenant],
                    why=f" (the others are full at {self._s.values_per_strategy} tenants each)",
                )
        elif not listed and holder is not None:
            self._admin.write_values(flag, holder, [v for v in real(values(holder)) if v != tenant])

    def _restore_exactly(
        self, flag: str, env: FlagEnv, tenant: str, listed: bool, snapshot: FlagSnapshot
    ) -> bool:
        """Write the recorded lists back when no other tenant changed since; False if one did
        (then only this tenant's membership is put back)."""
        recorded = snapshot.state.get("strategies")
        if not isinstance(recorded, list):
            return False
        shards = {str(s["id"]): values(s) for s in recorded if isinstance(s, dict) and owned(s)}
        wanted = env.tenants | {tenant} if listed else env.tenants - {tenant}
        recorded_tenants = {v for listed_ in shards.values() for v in real(listed_)}
        if wanted != recorded_tenants or not set(shards) <= {str(s["id"]) for s in env.shards}:
            return False
        for position, shard in enumerate(env.shards):
            old = shards.get(str(shard["id"]))
            if old is not None:
                if values(shard) != old:
                    self._admin.write_values(flag, shard, real(old))
            elif position > 0:
                # A strategy the flip added: never the first, so never the last one (trap 2).
                self._admin.delete_strategy(flag, shard)
            else:
                self._admin.write_values(flag, shard, [])
        return True

    def _check_can_turn_on(self, flag: str, env: FlagEnv) -> None:
        """Only an environment holding the tenant strategy and nothing else live (trap 1)."""
        if not env.shards:
            raise self._no_tenant_strategy(flag)
        live = env.others_live()
        if live:
            names = ", ".join(repr(s.get("title") or s.get("name")) for s in live)
            raise SettingsError(
                f"environment {self._s.environment!r} of flag {flag!r} is off, and turning it on for "
                f"the tenant would also turn on its other strategies ({names}) for whoever they match",
                where=self._s.url_var,
                hint="disable or remove those strategies, or turn the environment on yourself "
                "if they are meant to apply",
            )

    def _no_tenant_strategy(self, flag: str) -> SettingsError:
        return SettingsError(
            f"flag {flag!r} has no tenant strategy ({TITLE!r}) in environment {self._s.environment!r}",
            where=self._s.url_var,
            hint=f"run '{self._s.sync_command}': it adds the strategy without turning the flag on",
        )
