"""Playbooks: the pydantic model and the YAML loader (pure, no I/O beyond reading files)."""

from migrate.playbook.loader import LoadedPlaybook, load_playbook
from migrate.playbook.model import Playbook, Tenant

__all__ = ["LoadedPlaybook", "Playbook", "Tenant", "load_playbook"]
