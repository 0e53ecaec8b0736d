"""flags status and sync: the playbook's flags as their provider holds them."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from migrate.api.settings import (
    Environ,
    flag_file_provider,
    require_env,
    step_flags,
    unleash_provider,
)
from migrate.errors import SettingsError
from migrate.playbook import LoadedPlaybook, load_playbook
from migrate.playbook.model import UnleashFlags


@dataclass(frozen=True)
class FlagSummary:
    """One flag as its provider holds it, whoever the playbook's tenants are."""

    flag: str
    where: str  # the flag file, or "<url> environment <env>"
    environment_on: bool | None  # Unleash only
    tenants: tuple[str, ...]  # the tenant ids listed as on
    other_strategies: int | None  # Unleash only: strategies tenant-migrate does not own


@dataclass(frozen=True)
class FlagsRead:
    provider: str
    summaries: tuple[FlagSummary, ...]
    seen: Mapping[str, Mapping[str, bool]]  # flag -> tenant -> on, as the application sees it


def read_flags(loaded: LoadedPlaybook, environ: Environ, tenants: Sequence[str]) -> FlagsRead:
    """The playbook's flags as their provider holds them, and per tenant as the application sees them.

    Read-only (``status`` and ``flags status``): a missing flag file means no tenant was
    flipped yet, so all are off. Raises the provider's MigrateError when it cannot be read.
    """
    names = step_flags(loaded)
    seen: dict[str, dict[str, bool]] = {}
    summaries: list[FlagSummary] = []
    if names and isinstance(loaded.playbook.flags, UnleashFlags):
        provider = unleash_provider(loaded, environ)
        try:
            for name in names:
                info = provider.describe(name)
                seen[name] = provider.evaluate(name, tenants)
                summaries.append(
                    FlagSummary(
                        name,
                        f"{provider.settings.base_url} environment {info.environment}",
                        info.environment_on,
                        info.tenants,
                        info.other_strategies,
                    )
                )
        finally:
            provider.close()
    elif names:
        file_provider = flag_file_provider(loaded, environ, create=False)
        for name in names:
            if file_provider is None:
                seen[name] = dict.fromkeys(tenants, False)
                summaries.append(FlagSummary(name, "no flag file yet", None, (), None))
                continue
            seen[name] = file_provider.evaluate(name, tenants)
            listed = tuple(file_provider.tenants(name))
            summaries.append(FlagSummary(name, str(file_provider.path), None, listed, None))
    return FlagsRead(loaded.playbook.flags.provider, tuple(summaries), seen)


@dataclass(frozen=True)
class FlagSynced:
    flag: str
    actions: tuple[str, ...]  # what was done; empty when the flag was already there


@dataclass(frozen=True)
class FlagsSync:
    provider: str
    where: str
    flags: tuple[FlagSynced, ...]


def flags_sync(playbook: Path | str, *, environ: Environ | None = None) -> FlagsSync:
    """Create the flags the playbook uses (and its definitions list) where missing, off for everyone."""
    from migrate.adapters.flagfile import FlagDefinition, read_definitions

    environ = os.environ if environ is None else environ
    loaded = load_playbook(playbook)
    cfg = loaded.playbook.flags
    declared = read_definitions(loaded.resolve(cfg.definitions)) if cfg.definitions else []
    known = {d.name for d in declared}
    wanted = declared + [
        FlagDefinition(name, "", "release") for name in step_flags(loaded) if name not in known
    ]
    if isinstance(cfg, UnleashFlags):
        provider = unleash_provider(loaded, environ)
        try:
            done = provider.sync(wanted)
        finally:
            provider.close()
        where = f"{provider.settings.base_url} environment {provider.settings.environment}"
        return FlagsSync("unleash", where, tuple(FlagSynced(d.flag, d.actions) for d in done))
    if not cfg.definitions:
        raise SettingsError(
            "a flag file is created from flag definitions, and this playbook names none",
            where=loaded.where("flags"),
            hint="add 'definitions: ../flags/NAME.json' to the playbook's 'flags:' block",
        )
    path = Path(require_env(loaded, environ, cfg.file_env, "flags", "file_env", what="the flag state file"))
    before = flag_file_provider(loaded, environ, create=False)
    had = set() if before is None else set(before.snapshot_all())
    file_provider = flag_file_provider(loaded, environ, create=True)
    assert file_provider is not None
    present = set(file_provider.snapshot_all())
    missing = [d.name for d in wanted if d.name not in present]
    if missing:
        raise SettingsError(
            f"flag(s) {', '.join(missing)} used by the playbook's steps are not in its definitions",
            where=str(loaded.resolve(cfg.definitions)),
            hint="add them to the definitions file (see flags/README.md)",
        )
    synced = tuple(FlagSynced(d.name, () if d.name in had else ("created",)) for d in wanted)
    return FlagsSync("file", str(path), synced)
