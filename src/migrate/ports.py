"""Ports: the protocols through which steps and the engine reach the outside.

Adapters (``migrate.adapters``) implement them; the engine and the steps know
only these shapes, so a dry-run can swap a sink (a recording flag provider, a
rolled-back transaction) without a second implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
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


class FlagProvider(Protocol):
    """Per-tenant feature flags as the application will evaluate them."""

    def is_enabled(self, flag: str, tenant: str) -> bool:
        """What the application sees for this tenant (evaluated by the Unleash SDK)."""
        ...

    def set_enabled(self, flag: str, tenant: str, enabled: bool) -> FlagChange:
        """Turn the flag on or off for exactly this tenant; idempotent."""
        ...
