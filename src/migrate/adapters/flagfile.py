"""File flags: per-tenant flags in a local JSON file, evaluated by the Unleash SDK.

The embedded default of ``migrate demo``: no Unleash server, yet the same
answers an application gets. The file is in Unleash's own client-features
format (the body of ``GET /api/client/features``), so the official SDK loads
it unchanged as bootstrap and a server export can replace it::

    {"version": 2, "features": [...], "segments": []}

Every flag this provider manages has one shape, and it refuses any other::

    "enabled": true,
    "strategies": [{
        "name": "flexibleRollout",
        "parameters": {"rollout": "100", "stickiness": "default", "groupId": <flag>},
        "constraints": [{"contextName": "tenantId", "operator": "IN",
                         "values": [<sorted tenant ids>],
                         "inverted": false, "caseInsensitive": false}]
    }]

The tenant strategy stays even when its list is empty: an empty ``IN`` list is
off for everyone, whereas a flag with no strategy at all is ON for everyone
(shared/notes/unleash.md, trap 1; the SDK does the same with this file).

Writers are serialised by an exclusive ``flock`` on ``<file>.lock`` held over
read-modify-write, and replace the file atomically, so readers (this provider,
an application bootstrapping from the file) never see half a file and
concurrent runners never lose each other's flips.

A snapshot (``FlagProvider.snapshot``) is the flag's tenant list; restore puts the
tenant back and, when no other tenant changed since, writes that list exactly.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The SDK re-exports its client without __all__, which strict mypy reads as private.
from UnleashClient import UnleashClient  # type: ignore[attr-defined]
from UnleashClient.cache import FileCache
from UnleashClient.utils import InstanceAllowType

from migrate.errors import ArgumentError, SettingsError
from migrate.log import get_logger
from migrate.names import check_tenant_id
from migrate.ports import FlagChange, FlagSnapshot, FlagTarget

TENANT_CONTEXT = "tenantId"
"""The context field the application evaluates flags with."""

PROVIDER = "file"
"""The name snapshots of this provider carry (the playbook's ``flags.provider``)."""

_APP_NAME = "tenant-migrate"
# Never contacted: registration and metrics are off and toggles are not fetched.
# `.invalid` cannot resolve, so a regression fails instead of reaching a server.
_UNUSED_URL = "http://unleash.invalid/api"
_MISSING_FLAG_HINT = (
    "add it to the flag definitions file (flags/*.json) this file is created from; "
    "flags missing here are added from there, off for every tenant, when the file is next opened"
)
_SHAPE_HINT = (
    'keep exactly one flexibleRollout strategy at rollout "100" with one constraint '
    "tenantId IN [lower-case tenant ids] (see flags/README.md)"
)


def _normalise_tenant(tenant: str, where: Path) -> str:
    """Lower-case and strip, because the SDK's ``IN`` is case-sensitive (trap 4)."""
    normalised = tenant.strip().lower()
    try:
        return check_tenant_id(normalised)
    except ValueError as exc:
        raise ArgumentError(str(exc), where=str(where)) from exc


def file_target(path: Path) -> FlagTarget:
    """The target of a flag file: its absolute path (another working directory is another file)."""
    return {"provider": PROVIDER, "path": str(path.resolve())}


class MissingFlagFile:
    """A flag file that does not exist (yet), read but never created: every tenant is off.

    What a rehearsal and a rollback get instead of creating the file the application reads
    (only ``flags sync`` and a first run create it): reads answer off, a flip or restore is
    refused with the path — a rehearsal records flips without making them anyway.
    """

    def __init__(self, path: Path, flags: Sequence[str]) -> None:
        self._path = path
        self._flags = frozenset(flags)

    def target(self) -> FlagTarget:
        return file_target(self._path)

    def _known(self, flag: str) -> None:
        if flag not in self._flags:
            raise SettingsError(f"flag {flag!r} is not in the flag definitions", where=str(self._path))

    def is_enabled(self, flag: str, tenant: str) -> bool:
        self._known(flag)
        return False

    def snapshot(self, flag: str, tenant: str) -> FlagSnapshot:
        self._known(flag)
        tenant_id = _normalise_tenant(tenant, self._path)
        state = {"path": str(self._path.resolve()), "values": []}
        return FlagSnapshot(PROVIDER, flag, tenant_id, False, state)

    def _absent(self) -> SettingsError:
        return SettingsError(
            "the flag file does not exist, so no tenant is on there and nothing can be restored in it",
            where=str(self._path),
            hint="point the flag file variable at the file the application reads; only "
            "'migrate flags sync' and a first run create one",
        )

    def set_enabled(self, flag: str, tenant: str, enabled: bool) -> FlagChange:
        raise self._absent()

    def restore(self, snapshot: FlagSnapshot) -> FlagChange:
        raise self._absent()


@dataclass(frozen=True)
class FlagDefinition:
    """One flag of a definitions file (flags/*.json): what ``migrate flags sync`` creates."""

    name: str
    description: str
    type: str


def read_definitions(path: Path) -> list[FlagDefinition]:
    """The flags a definitions file declares, checked as the file provider checks them."""
    document = FileFlagProvider._load(path)
    out = []
    for feature in document["features"]:
        FileFlagProvider._constraint(feature, path)  # the tenantId shape, or a SettingsError
        description = feature.get("description")
        kind = feature.get("type")
        out.append(
            FlagDefinition(
                name=feature["name"],
                description=description if isinstance(description, str) else "",
                type=kind if isinstance(kind, str) and kind else "release",
            )
        )
    return out


class FileFlagProvider:
    """Per-tenant flags in an Unleash client-features JSON file (``FlagProvider``)."""

    def __init__(self, path: Path, *, definitions: Path | None = None) -> None:
        self._path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._log = get_logger()
        if definitions is not None:
            self._define(definitions)
        elif not path.exists():
            raise SettingsError(
                "the flag file does not exist",
                where=str(path),
                hint="pass the flag definitions file (flags/*.json) to create it, or fix the path",
            )
        # Fail at start-up, not at the first cut-over, on a file that will not load.
        self._read()

    @property
    def path(self) -> Path:
        """The flag file, loadable unchanged as Unleash SDK bootstrap."""
        return self._path

    def target(self) -> FlagTarget:
        return file_target(self._path)

    def is_enabled(self, flag: str, tenant: str) -> bool:
        """What the application sees for this tenant, as the official SDK evaluates the file."""
        tenant_id = _normalise_tenant(tenant, self._path)
        return self.evaluate(flag, [tenant_id])[tenant_id]

    def evaluate(self, flag: str, tenants: Sequence[str]) -> dict[str, bool]:
        """What the application sees for each tenant (normalised ids), from one SDK client."""
        tenant_ids = [_normalise_tenant(tenant, self._path) for tenant in tenants]
        # A fresh cache directory per call: the SDK falls back to a disk cache that may
        # hold an earlier run's state, and the default one lives in ~/.cache (notes).
        with tempfile.TemporaryDirectory(prefix="tenant-migrate-unleash-") as cache_dir:
            cache = FileCache(_APP_NAME, directory=cache_dir)
            try:
                cache.bootstrap_from_file(self._path)
            except OSError as exc:
                raise SettingsError(
                    f"cannot read the flag file: {exc.strerror}", where=str(self._path)
                ) from exc
            client = UnleashClient(
                _UNUSED_URL,
                _APP_NAME,
                disable_metrics=True,
                disable_registration=True,
                cache=cache,
                # One client per call, same identifier each time: the default WARN mode
                # would log an error from the second call on.
                multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
            )
            try:
                # What an application without a server runs. It starts a scheduler thread
                # that destroy() joins; skipping it makes destroy() log a teardown warning.
                client.initialize_client(fetch_toggles=False)
                known = client.feature_definitions()
                seen = {t: bool(client.is_enabled(flag, {TENANT_CONTEXT: t})) for t in tenant_ids}
            finally:
                client.destroy()
        if flag not in known:
            # The SDK answers False for a flag it does not know: confirming a flip
            # against it would "succeed" whatever the file says.
            if not known:
                raise SettingsError(
                    "the Unleash SDK loaded no flags from the flag file (it drops the whole "
                    "file when one feature is malformed, e.g. a numeric rollout)",
                    where=str(self._path),
                    hint=_SHAPE_HINT,
                )
            raise SettingsError(
                f"flag {flag!r} is not in the flag file",
                where=str(self._path),
                hint=_MISSING_FLAG_HINT,
            )
        return seen

    def set_enabled(self, flag: str, tenant: str, enabled: bool) -> FlagChange:
        """Turn the flag on or off for exactly this tenant; idempotent, atomic, serialised."""
        tenant_id = _normalise_tenant(tenant, self._path)
        with self._locked():
            document = self._read()
            constraint = self._constraint(self._feature(document, flag), self._path)
            values: list[str] = constraint["values"]
            before = tenant_id in values
            if before != enabled:
                wanted = set(values) | {tenant_id} if enabled else set(values) - {tenant_id}
                # Replace the whole list, sorted: one diff per flip, no duplicates.
                constraint["values"] = sorted(wanted)
                self._write(document)
        change = FlagChange(flag=flag, tenant=tenant_id, before=before, after=enabled)
        if change.changed:
            self._log.info("flag_flipped", flag=flag, tenant=tenant_id, before=before, after=enabled)
        return change

    def tenants(self, flag: str) -> list[str]:
        """The tenant ids the flag is on for, as written in the file."""
        values: list[str] = self._constraint(self._feature(self._read(), flag), self._path)["values"]
        return sorted(values)

    def snapshot(self, flag: str, tenant: str) -> FlagSnapshot:
        """The flag's tenant list as it is now: all a flip in this file can change."""
        tenant_id = _normalise_tenant(tenant, self._path)
        values = self.tenants(flag)
        return FlagSnapshot(
            provider=PROVIDER,
            flag=flag,
            tenant=tenant_id,
            enabled=tenant_id in values,
            state={"path": str(self._path.resolve()), "values": values},
        )

    def restore(self, snapshot: FlagSnapshot) -> FlagChange:
        """Put the tenant back as recorded; other tenants flipped since keep their state."""
        if snapshot.provider != PROVIDER:
            raise SettingsError(
                f"cannot restore a snapshot taken by the {snapshot.provider} flag provider into a flag file",
                where=str(self._path),
                hint="restore with the flag provider the step ran with (the playbook's 'flags:' block)",
            )
        recorded = snapshot.state.get("values")
        recorded_values = sorted(str(v) for v in recorded) if isinstance(recorded, list) else None
        tenant_id = _normalise_tenant(snapshot.tenant, self._path)
        with self._locked():
            document = self._read()
            constraint = self._constraint(self._feature(document, snapshot.flag), self._path)
            values: list[str] = constraint["values"]
            before = tenant_id in values
            wanted = set(values) | {tenant_id} if snapshot.enabled else set(values) - {tenant_id}
            # With no other flip since, the recorded list comes back exactly.
            exact = recorded_values is not None and set(recorded_values) == wanted
            new_values = recorded_values if exact and recorded_values is not None else sorted(wanted)
            if new_values != values:
                constraint["values"] = new_values
                self._write(document)
        change = FlagChange(flag=snapshot.flag, tenant=tenant_id, before=before, after=snapshot.enabled)
        if change.changed:
            self._log.info(
                "flag_restored", flag=snapshot.flag, tenant=tenant_id, before=before, after=snapshot.enabled
            )
        return change

    def snapshot_all(self) -> dict[str, list[str]]:
        """Every flag in the file with the tenant ids it is on for."""
        document = self._read()
        return {
            feature["name"]: sorted(self._constraint(feature, self._path)["values"])
            for feature in document["features"]
        }

    # -- file handling -------------------------------------------------------------

    def _define(self, definitions: Path) -> None:
        """Create the file from the definitions, or add the flags it does not have yet."""
        declared = self._load(definitions)
        for feature in declared["features"]:
            if self._constraint(feature, definitions)["values"]:
                raise SettingsError(
                    f"flag {feature['name']!r} lists tenants in the definitions file",
                    where=str(definitions),
                    hint="leave the tenantId list empty: tenants are turned on by a run, "
                    "which records each flip in the ledger",
                )
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SettingsError(
                f"cannot create the flag file's directory: {exc.strerror}", where=str(self._path)
            ) from exc
        with self._locked():
            if not self._path.exists():
                self._write(declared)
                return
            document = self._read()
            present = {feature.get("name") for feature in document["features"]}
            missing = [f for f in declared["features"] if f["name"] not in present]
            if missing:
                # Additions only, each off for everyone: existing flags keep their tenants.
                document["features"].extend(missing)
                self._write(document)

    def _read(self) -> dict[str, Any]:
        return self._load(self._path)

    @staticmethod
    def _load(path: Path) -> dict[str, Any]:
        """Parse a client-features document and check what the SDK silently needs."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError(f"cannot read the flag file: {exc.strerror}", where=str(path)) from exc
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SettingsError(
                f"not valid JSON: {exc.msg}",
                where=f"{path}:{exc.lineno}",
                hint="the file is Unleash's client-features JSON (see flags/README.md)",
            ) from exc
        # Without "version" the SDK loads no flag at all and answers False, silently.
        if (
            not isinstance(document, dict)
            or not isinstance(document.get("version"), int)
            or not isinstance(document.get("features"), list)
            or not all(isinstance(f, dict) and isinstance(f.get("name"), str) for f in document["features"])
        ):
            raise SettingsError(
                "not an Unleash client-features document",
                where=str(path),
                hint='write {"version": 2, "features": [{"name": …}, …], "segments": []}',
            )
        return document

    def _feature(self, document: dict[str, Any], flag: str) -> dict[str, Any]:
        for feature in document["features"]:
            if feature["name"] == flag:
                found: dict[str, Any] = feature
                return found
        raise SettingsError(
            f"flag {flag!r} is not in the flag file", where=str(self._path), hint=_MISSING_FLAG_HINT
        )

    @staticmethod
    def _constraint(feature: dict[str, Any], where: Path) -> dict[str, Any]:
        """The tenant constraint of a flag in the managed shape, or a SettingsError."""
        name = feature["name"]

        def refuse(problem: str) -> SettingsError:
            return SettingsError(f"flag {name!r}: {problem}", where=str(where), hint=_SHAPE_HINT)

        # Each check guards a way the SDK would answer differently from the tenant list.
        if feature.get("enabled") is not True:
            raise refuse("is disabled, so it is off for every tenant whatever the list says")
        strategies = feature.get("strategies")
        if not isinstance(strategies, list) or len(strategies) != 1:
            raise refuse("needs exactly one strategy (with none it is ON for every tenant; several are ORed)")
        strategy = strategies[0]
        if not isinstance(strategy, dict) or strategy.get("name") != "flexibleRollout":
            raise refuse("the strategy must be flexibleRollout")
        parameters = strategy.get("parameters")
        # The SDK drops the whole file when rollout is a number, so "100" as a string.
        if not isinstance(parameters, dict) or parameters.get("rollout") != "100":
            raise refuse('the strategy needs "parameters": {"rollout": "100", …}')
        # The SDK ignores "disabled" on a strategy (a server leaves such ones out).
        if strategy.get("disabled") or strategy.get("segments"):
            raise refuse("the strategy must not be disabled or use segments")
        constraints = strategy.get("constraints")
        if not isinstance(constraints, list) or len(constraints) != 1:
            raise refuse("the strategy needs exactly one constraint (none is ON for every tenant)")
        constraint = constraints[0]
        if (
            not isinstance(constraint, dict)
            or constraint.get("contextName") != TENANT_CONTEXT
            or constraint.get("operator") != "IN"
            or constraint.get("inverted", False) is not False
            or constraint.get("caseInsensitive", False) is not False
        ):
            raise refuse("the constraint must be tenantId IN […], not inverted")
        values = constraint.get("values")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise refuse("the constraint's values must be a list of tenant ids")
        if any(v != v.strip().lower() for v in values) or len(set(values)) != len(values):
            # The SDK matches exactly: "Acme" would not turn on tenant "acme".
            raise refuse("tenant ids must be lower-case, without spaces, each listed once")
        found: dict[str, Any] = constraint
        return found

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the exclusive cross-process lock for one read-modify-write."""
        try:
            # The lock file is never removed: unlinking it would let a waiter lock a
            # file that a newcomer no longer sees.
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise SettingsError(
                f"cannot open the flag lock file: {exc.strerror}", where=str(self._lock_path)
            ) from exc
        try:
            # flock belongs to this open file description, so threads of one process
            # each opening the file are serialised as well as processes.
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _write(self, document: dict[str, Any]) -> None:
        """Replace the file atomically: readers see the old or the new, never half."""
        data = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        directory = self._path.parent
        try:
            mode = self._path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644  # readable by an application running as another user
        try:
            fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{self._path.name}.", suffix=".tmp")
        except OSError as exc:
            raise SettingsError(f"cannot write the flag file: {exc.strerror}", where=str(self._path)) from exc
        try:
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(data)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.chmod(tmp_name, mode)
            os.replace(tmp_name, self._path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            if isinstance(exc, OSError):
                raise SettingsError(
                    f"cannot write the flag file: {exc.strerror or exc}", where=str(self._path)
                ) from exc
            raise
        # The rename is durable only once the directory entry is on disk.
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
