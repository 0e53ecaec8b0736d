"""Online migration end to end: a real application writes during the copy and the catch-up; after the
cut-over the target equals the source, table by table, by our own comparison."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from live import APP_ROLE, FLAG, LiveWorld, Writer, drop_databases, make_live_world
from migrate import api


@pytest.fixture
def live(logical_admin_dsn: str, tmp_path: Path) -> Iterator[LiveWorld]:
    created: list[str] = []
    try:
        yield make_live_world(logical_admin_dsn, tmp_path, {"acme": 4}, created)
    finally:
        drop_databases(logical_admin_dsn, created)


def test_online_migration_with_a_writer_loses_nothing_and_freezes_briefly(live: LiveWorld) -> None:
    """Writes during the copy and catch-up all arrive; the freeze stays under max_freeze; the source stays
    frozen."""
    writer = Writer(live.source_dsn("acme", APP_ROLE), rate=150).start()
    writer.wait_for(20)
    try:
        result = api.run(live.playbook, environ=live.environ)
    finally:
        time.sleep(0.3)  # a few writes refused by the freeze
        writer.stop()
    assert result.ok, [t.error for t in result.tenants]
    assert writer.committed > 50 and writer.refused > 0, (
        writer.committed,
        writer.refused,
        writer.errors[-3:],
    )
    rows = live.assert_equal("acme")
    assert rows["comments"] > 800
    cutover = next(s for s in result.tenants[0].steps if s.kind == "cutover")
    assert 0 < cutover.details["freeze_seconds"] <= 2.0
    assert cutover.details["match"] is True
    status = api.status(live.playbook, environ=live.environ).tenants[0]
    assert status.flags == {FLAG: True}
