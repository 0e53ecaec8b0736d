"""The test harness itself: the world a marker asks for."""

from __future__ import annotations

import pytest

from world import World


@pytest.mark.tenants("globex", acme=2)
def test_the_world_has_the_tenants_its_marker_names_at_their_scales(world: World) -> None:
    """@pytest.mark.tenants("globex", acme=2): globex at scale 1 then acme at scale 2, each a source."""
    assert world.tenants == {"globex": 1, "acme": 2}
    assert world.source_counts("acme")["tasks"] == 2 * world.source_counts("globex")["tasks"] > 0
