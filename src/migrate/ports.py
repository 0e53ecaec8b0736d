"""Ports: the protocols through which steps and the engine reach the outside.

Adapters (``migrate.adapters``) implement them; the engine and the steps know
only these shapes, so a dry-run can swap a sink (a recording flag provider, a
rolled-back transaction) without a second implementation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class FlagChange:
    """What a flag flip did for one tenant: the state before and after."""

    flag: str
    tenant: str
    before: bool
    after: bool

    @property
    def changed(self) -> bool:
        return self.before != self.after


@dataclass(frozen=True)
class FlagSnapshot:
    """Exactly what a flag looked like, as far as one tenant's flip can change it.

    ``enabled`` is what the tenant saw; ``state`` is the provider's own record
    of everything the flip may touch (the file's tenant list; on Unleash the
    environment's on/off and every strategy in it), as plain JSON, so the flag
    step can keep it in the control schema and the ledger and restore it after
    a crash, in another process.
    """

    provider: str
    flag: str
    tenant: str
    enabled: bool
    state: Mapping[str, object] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """A JSON-able dict that :meth:`from_json` turns back into this snapshot."""
        return {
            "provider": self.provider,
            "flag": self.flag,
            "tenant": self.tenant,
            "enabled": self.enabled,
            # A deep copy through JSON: the caller may keep and change its own dicts.
            "state": json.loads(json.dumps(dict(self.state))),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> FlagSnapshot:
        state = data.get("state")
        return cls(
            provider=str(data["provider"]),
            flag=str(data["flag"]),
            tenant=str(data["tenant"]),
            enabled=bool(data["enabled"]),
            state=dict(state) if isinstance(state, Mapping) else {},
        )


FlagTarget = Mapping[str, str]
"""Where the application reads the flags, as plain strings for the control schema and the ledger:
``{"provider": "file", "path": <absolute path>}`` or ``{"provider": "unleash", "url": <server, no
credentials>, "project": …, "environment": …}``."""


def same_target(recorded: FlagTarget, current: FlagTarget) -> bool:
    """Whether a recorded flag target is the current one (keys one side lacks, from older records,
    are not compared)."""
    return all(recorded[key] == current[key] for key in recorded.keys() & current.keys())


def describe_target(target: FlagTarget) -> str:
    """'the flag file /srv/flags.json', 'Unleash https://u.example project default environment production'."""
    if target.get("provider") == "file":
        return f"the flag file {target.get('path', '?')}"
    parts = [f"Unleash {target['url']}" if "url" in target else "Unleash"]
    parts += [f"{key} {target[key]}" for key in ("project", "environment") if key in target]
    return " ".join(parts)


class FlagProvider(Protocol):
    """Per-tenant feature flags as the application will evaluate them."""

    def target(self) -> FlagTarget:
        """Where the application reads these flags (recorded with every flip; see FlagTarget)."""
        ...

    def is_enabled(self, flag: str, tenant: str) -> bool:
        """What the application sees for this tenant (evaluated by the Unleash SDK)."""
        ...

    def set_enabled(self, flag: str, tenant: str, enabled: bool) -> FlagChange:
        """Turn the flag on or off for exactly this tenant; idempotent."""
        ...

    def snapshot(self, flag: str, tenant: str) -> FlagSnapshot:
        """Record exactly what the flag looks like now, before this tenant's flip."""
        ...

    def restore(self, snapshot: FlagSnapshot) -> FlagChange:
        """Put back what ``snapshot`` recorded for its tenant; idempotent.

        With no other flip in between, the flag is afterwards exactly as
        recorded (compared as JSON). Other tenants flipped since the snapshot
        keep their new state: a rollback of one tenant never undoes another's.
        """
        ...
