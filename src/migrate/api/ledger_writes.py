"""What a command that writes the ledger needs: the key it signs with, and the head it publishes.

Apart from ``api.audit`` (the commands that read the ledger), for ``run``, ``approve`` and
``rollback`` (``api.runs``) to use without importing the readers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import psycopg

from migrate.api.settings import Environ
from migrate.control import head as ledger_head
from migrate.control.signing import ledger_keys
from migrate.engine.session import Regions
from migrate.errors import MigrateError
from migrate.log import get_logger, redact


def signing(regions: Regions, environ: Environ) -> None:
    """A writer signs every entry with the playbook's key and can publish the head: both checked
    before any work (exit 2), not found missing half-way. One key for every target of the playbook."""
    loaded = regions.loaded
    settings = loaded.playbook.ledger
    keys = ledger_keys(settings, environ, resolve=loaded.resolve, where=loaded.where, need_signer=True)
    for env in regions.envs.values():
        env.signer = keys.signer
    if loaded.playbook.ledger.head_file is not None:
        path = loaded.resolve(loaded.playbook.ledger.head_file)
        ledger_head.writable(path, loaded.where("ledger", "head_file"))


@contextmanager
def head_published(regions: Regions, written: Iterable[str], event: str) -> Iterator[list[str]]:
    """After the command, however it ends, append the head of every target it wrote (``written``:
    target names) to ``ledger.head_file`` (heads are keyed by database).

    Yields the list the warnings go to when one cannot be published: the command's own
    outcome stands either way (its entries are in the ledger), and the next one publishes.
    """
    unpublished: list[str] = []
    try:
        yield unpublished
    finally:
        setting = regions.loaded.playbook.ledger.head_file
        if setting is not None:
            path = regions.loaded.resolve(setting)
            for name in dict.fromkeys(written):
                env = regions.envs[name]
                try:
                    with env.connect_target() as conn:
                        head = ledger_head.current(conn, env.target.control_schema, event)
                    if head is not None:
                        ledger_head.publish(path, head, env.signer)
                except (MigrateError, psycopg.Error, OSError) as exc:
                    warning = f"the ledger's head was not published to {path}: {redact(str(exc).strip())}"
                    get_logger().warning("ledger_head_not_published", path=str(path), error=warning)
                    unpublished.append(warning)
