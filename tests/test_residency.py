"""Data residency: each tenant lands only in the shared database of its region, provably.

Two target databases on the test server stand for two regions (``playbooks/demo-regions.yaml``:
acme in ``eu``, globex and initech in ``us``). Every count here is taken directly on each
database, independently of the tool.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from databases import DatabaseFactory
from migrate import api
from migrate.cli.app import main
from migrate.engine.rollback import rollback as engine_rollback
from migrate.engine.run import RunOptions
from migrate.engine.run import run as engine_run
from migrate.errors import ArgumentError, PlaybookError, ResidencyRefused
from migrate.plan import build_plan
from migrate.playbook import load_playbook
from world import DEMO, ROOT, TABLES, World, make_world

REGIONS = ROOT / "playbooks" / "demo-regions.yaml"
HOME = {"acme": "eu", "globex": "us", "initech": "us"}


class Regions:
    """The world with a second target: EU is the world's target, US a database of its own."""

    def __init__(self, world: World, us_dsn: str) -> None:
        self.world = world
        self.dsn = {"eu": world.target_dsn, "us": us_dsn}

    @property
    def environ(self) -> dict[str, str]:
        env = dict(self.world.environ)
        del env["MIGRATE_TARGET_DSN"]
        return {**env, "MIGRATE_EU_TARGET_DSN": self.dsn["eu"], "MIGRATE_US_TARGET_DSN": self.dsn["us"]}

    def swapped(self) -> dict[str, str]:
        """The same settings with the two regions' DSN variables exchanged (the mistake to refuse)."""
        return {
            **self.environ,
            "MIGRATE_EU_TARGET_DSN": self.dsn["us"],
            "MIGRATE_US_TARGET_DSN": self.dsn["eu"],
        }

    def record_both(self) -> None:
        for region in ("eu", "us"):
            api.residency_set(REGIONS, region, environ=self.environ)


@pytest.fixture
def regions(database_factory: DatabaseFactory, tmp_path: Path) -> Regions:
    world = make_world(database_factory, tmp_path, tenants=(("acme", 1), ("globex", 1), ("initech", 1)))
    return Regions(world, database_factory.create("us"))


def rows_of(dsn: str, tenant: str) -> int:
    """The tenant's rows in every shared table of that database, counted directly (0 with no schema)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        total = 0
        for table in TABLES:
            found = conn.execute("SELECT to_regclass(%s)", (f"app.{table}",)).fetchone()
            if found and found[0]:
                row = conn.execute(
                    sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = %s").format(
                        sql.Identifier("app", table)
                    ),
                    (tenant,),
                ).fetchone()
                total += int(row[0]) if row else 0
        return total


def source_rows(world: World, tenant: str) -> int:
    return sum(world.source_counts(tenant).values())


def scalar(dsn: str, query: str, *params: object) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params or None).fetchone()
        return None if row is None else row[0]


def control_tables(dsn: str) -> int:
    return int(scalar(dsn, "SELECT count(*) FROM pg_tables WHERE schemaname IN ('migrate_control', 'app')"))


def ledger_rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT action, tenant, details FROM migrate_control.ledger ORDER BY seq"
        ).fetchall()


def cli(environ: dict[str, str], monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    for key in ("MIGRATE_TARGET_DSN", "MIGRATE_EU_TARGET_DSN", "MIGRATE_US_TARGET_DSN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    return main(list(args))


# ----------------------------------------------------------------------------- the playbook
def write(tmp_path: Path, text: str, name: str = "book.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BOOK = """\
version: 1
name: r
targets:
  eu: {dsn_env: EU_DSN}
  us: {dsn_env: US_DSN}
source: {dsn_template_env: SRC}
tenants:
  - {id: acme, region: eu}
  - {id: globex, region: us}
phases:
  - name: copy
    steps: [{kind: backfill}]
"""


@pytest.mark.parametrize(
    ("change", "line", "said"),
    [
        (
            ("region: us}", "region: usa}"),
            9,
            "tenant 'globex' is in region 'usa', and no target holds that region",
        ),
        (("  us: {dsn_env: US_DSN}", "  ~: {dsn_env: US_DSN}"), 5, "a target without a region"),
        (("  us: {dsn_env: US_DSN}", "  us: {dsn_env: EU_DSN}"), 5, "targets 'eu' and 'us' both read EU_DSN"),
        (("targets:", "target: {dsn_env: X}\ntargets:"), 4, "both 'target:' and 'targets:' are set"),
        (("  us: {dsn_env: US_DSN}", "  us: {dsn_env: US_DSN, region: eu}"), 5, "says 'region: eu'"),
        (("  us: {dsn_env: US_DSN}", "  us: {dsn_env: US_DSN, dsn: x}"), 5, "unknown field 'dsn'"),
    ],
)
def test_a_tenant_without_a_target_or_a_target_without_a_region_is_a_playbook_error_at_its_line(
    tmp_path: Path, change: tuple[str, str], line: int, said: str
) -> None:
    """Targets by region: every mistake is a PlaybookError (exit 2) with file:line, never a traceback."""
    book = write(tmp_path, BOOK.replace(*change))
    with pytest.raises(PlaybookError) as caught:
        load_playbook(book)
    assert said in caught.value.message
    assert caught.value.where is not None and caught.value.where.startswith(f"{book}:{line}")


def test_one_target_with_a_region_holds_only_that_regions_tenants(tmp_path: Path) -> None:
    """'target: {region: eu}' with a US tenant: an error at the tenant's region, saying to use 'targets:'."""
    text = BOOK.replace(
        "targets:\n  eu: {dsn_env: EU_DSN}\n  us: {dsn_env: US_DSN}", "target: {dsn_env: T, region: eu}"
    )
    with pytest.raises(PlaybookError) as caught:
        load_playbook(write(tmp_path, text))
    assert "the target holds region 'eu' only" in caught.value.message
    assert caught.value.where is not None and ":7: tenants[1].region" in caught.value.where


def test_the_demo_playbooks_route_tenants_and_the_old_one_keeps_its_version() -> None:
    """demo-regions routes each tenant to its region's target; demo.yaml (one target) keeps its version."""
    plan = build_plan(load_playbook(REGIONS))
    assert {tp.tenant.id: tp.target for tp in plan.tenants} == HOME
    assert [(t.name, t.dsn_env, t.tenants) for t in plan.targets] == [
        ("eu", "MIGRATE_EU_TARGET_DSN", ("acme",)),
        ("us", "MIGRATE_US_TARGET_DSN", ("globex", "initech")),
    ]
    assert "target=eu" in api.render_text(plan)
    # The version runs accepted before targets existed must not change: no --replan for an upgrade.
    assert load_playbook(DEMO).digest.startswith("165339573d44")
    assert {tp.target for tp in build_plan(load_playbook(DEMO)).tenants} == {"default"}


# ----------------------------------------------------------------------------- run, by region
def test_run_puts_each_tenant_only_in_its_regions_database_with_its_own_state_and_ledger(
    regions: Regions,
) -> None:
    """Two targets: each tenant's rows are all in its region's database and none in the other; each
    target's control schema holds only its own tenants' state and ledger, naming region and target."""
    regions.record_both()
    result = api.run(REGIONS, environ=regions.environ)
    assert result.ok, [(t.tenant, t.error) for t in result.tenants]
    for tenant, home in HOME.items():
        other = "us" if home == "eu" else "eu"
        assert rows_of(regions.dsn[home], tenant) == source_rows(regions.world, tenant) > 0
        assert rows_of(regions.dsn[other], tenant) == 0
    for region in ("eu", "us"):
        mine = {t for t, home in HOME.items() if home == region}
        states = {
            r[0]
            for r in psycopg.connect(regions.dsn[region]).execute(
                "SELECT DISTINCT tenant FROM migrate_control.step_state"
            )
        }
        assert states == mine
        entries = ledger_rows(regions.dsn[region])
        tenants = {tenant for _action, tenant, _details in entries if tenant}
        assert tenants == mine
        for action, tenant, details in entries:
            if tenant:
                assert (details["region"], details["target"]) == (region, region), (action, details)
        finished = [d for a, _t, d in entries if a == "run_finished"]
        assert [set(d) for d in finished] == [mine]  # each region's audit names its own tenants only
        runs = scalar(
            regions.dsn[region], "SELECT count(*) FROM migrate_control.runs WHERE run_id = %s", result.run_id
        )
        assert runs == 1  # one run id, one row in each target it wrote to
    assert api.verify(REGIONS, environ=regions.environ).match
    assert api.diff(REGIONS, "acme", "tasks", environ=regions.environ).equal


def test_a_wave_waits_for_an_earlier_wave_in_another_region(regions: Regions) -> None:
    """globex (US, main) waits while acme (EU, canary) is not done — read from the EU target — then runs."""
    regions.record_both()
    waiting = api.run(REGIONS, ["globex"], environ=regions.environ)
    assert [t.outcome for t in waiting.tenants] == ["waiting"]
    assert rows_of(regions.dsn["us"], "globex") == 0
    assert api.run(REGIONS, ["acme"], environ=regions.environ).ok
    assert api.run(REGIONS, ["globex"], environ=regions.environ).ok
    assert rows_of(regions.dsn["us"], "globex") == source_rows(regions.world, "globex")


def test_what_another_regions_target_says_of_a_tenant_is_no_progress_and_the_report_finds_leftovers(
    regions: Regions, tmp_path: Path
) -> None:
    """The same playbook, before it had regions, once copied acme into the US database: with targets by
    region that state counts for nothing — the main wave still waits for acme in the EU target, status
    says 'not started' — and once acme is in the EU target, the report finds the rows left in the US one."""
    text = REGIONS.read_text().replace("../flags/demo.json", str(ROOT / "flags" / "demo.json"))
    cut = text.index("\ntargets:\n"), text.index("\nsource:\n")
    before = text[: cut[0]] + "\ntarget: {dsn_env: MIGRATE_US_TARGET_DSN}\n" + text[cut[1] :]
    old = write(tmp_path, before, "before-regions.yaml")
    assert load_playbook(old).playbook.name == load_playbook(REGIONS).playbook.name
    assert api.run(old, ["acme"], environ=regions.environ).ok
    regions.record_both()
    waiting = api.run(REGIONS, ["globex"], environ=regions.environ, replan=True)
    assert [t.outcome for t in waiting.tenants] == ["waiting"]
    status = api.status(REGIONS, environ=regions.environ)
    assert {t.tenant: t.state for t in status.tenants}["acme"] == "not started"
    assert api.run(REGIONS, environ=regions.environ, replan=True).ok
    report = api.residency_report(REGIONS, environ=regions.environ)
    acme = next(r for r in report.tenants if r.tenant == "acme")
    assert acme.rows == source_rows(regions.world, "acme") == acme.elsewhere["us"]
    assert not report.ok and any("tenant acme (region eu)" in f for f in report.findings)


def test_an_approval_gate_of_a_wave_spanning_regions_is_recorded_in_each_of_them(
    regions: Regions, tmp_path: Path
) -> None:
    """Wave main holds an EU and a US tenant: approve writes its record and entry in both targets,
    each naming its own tenants; the run then goes on in both."""
    text = REGIONS.read_text().replace("  - name: main", "  - name: main\n    approval: true")
    text = text.replace("{id: initech, region: us", "{id: initech, region: eu")
    text = text.replace("../flags/demo.json", str(ROOT / "flags" / "demo.json"))
    book = write(tmp_path, text, "gated-regions.yaml")
    regions.record_both()
    assert api.run(book, ["acme"], environ=regions.environ).ok
    assert [t.outcome for t in api.run(book, environ=regions.environ).tenants if t.wave == "main"] == [
        "waiting",
        "waiting",
    ]
    api.approve(book, "main", environ=regions.environ)
    for region, mine in (("eu", ["initech"]), ("us", ["globex"])):
        approved = [d for a, _t, d in ledger_rows(regions.dsn[region]) if a == "approved"]
        assert [d["tenants"] for d in approved] == [mine]
    assert api.run(book, environ=regions.environ).ok
    assert rows_of(regions.dsn["eu"], "initech") == source_rows(regions.world, "initech")
    assert rows_of(regions.dsn["us"], "initech") == 0


# ----------------------------------------------------------------------------- the guard
def test_a_dsn_swapped_between_regions_is_refused_before_any_row_moves_with_nothing_written(
    regions: Regions, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """EU's variable points at the US database: run and its rehearsal exit 2 naming both regions, and
    neither database gains a row, a table or a ledger entry."""
    regions.record_both()
    before = {r: (control_tables(d), len(ledger_rows(d))) for r, d in regions.dsn.items()}
    with pytest.raises(ResidencyRefused) as caught:
        api.run(REGIONS, environ=regions.swapped())
    assert "region eu" in caught.value.message and "recorded as region us" in caught.value.message
    assert cli(regions.swapped(), monkeypatch, "run", str(REGIONS)) == 2
    assert cli(regions.swapped(), monkeypatch, "run", str(REGIONS), "--dry-run") == 2
    err = capsys.readouterr().err
    assert "tenant 'acme' is in region eu" in err and "MIGRATE_EU_TARGET_DSN" in err
    assert {r: (control_tables(d), len(ledger_rows(d))) for r, d in regions.dsn.items()} == before
    for tenant in HOME:
        assert rows_of(regions.dsn["eu"], tenant) == rows_of(regions.dsn["us"], tenant) == 0


def test_the_guard_in_every_tenant_session_refuses_what_no_preflight_checked(regions: Regions) -> None:
    """The engine driven directly (no api preflight) with EU's connection reaching the US database: the
    tenant ends 'refused' in its session, before any step, and no row of it is written anywhere."""
    regions.record_both()
    loaded = load_playbook(REGIONS)
    api.run(REGIONS, ["acme"], environ=regions.environ, dry_run=True)  # control schemas exist
    envs = api.environments(loaded, regions.swapped(), "pytest")
    for record in ("run", "rehearsal"):
        from migrate.engine.sinks import RehearsalRecord, RunRecord

        options = RunOptions(record=RunRecord() if record == "run" else RehearsalRecord())
        result = engine_run(envs, build_plan(loaded, tenants=["acme"]), options)
        assert [(t.tenant, t.outcome) for t in result.tenants] == [("acme", "refused")], record
        assert result.refused and isinstance(result.tenants[0].error, ResidencyRefused)
    assert rows_of(regions.dsn["us"], "acme") == rows_of(regions.dsn["eu"], "acme") == 0
    states = scalar(regions.dsn["us"], "SELECT count(*) FROM migrate_control.step_state")
    assert states == 0


def test_a_rollback_through_a_swapped_dsn_is_refused_before_any_flag_or_row_goes_back(
    regions: Regions, database_factory: DatabaseFactory
) -> None:
    """After a run, a rollback whose variables are swapped refuses as a whole, and so does the engine
    when only the US one reaches an EU database: every tenant's rows and flags stay."""
    regions.record_both()
    assert api.run(REGIONS, environ=regions.environ).ok
    flags = json.loads(regions.world.flag_file.read_text())
    with pytest.raises(ResidencyRefused):
        api.rollback(
            REGIONS,
            None,
            "pre-copy",
            all_tenants=True,
            discard_writes_since_cutover=True,
            environ=regions.swapped(),
        )
    assert json.loads(regions.world.flag_file.read_text()) == flags
    for tenant, home in HOME.items():
        assert rows_of(regions.dsn[home], tenant) == source_rows(regions.world, tenant)
    # The engine on its own (no api preflight), with only the US variable wrong: every tenant's
    # context is made, and checked, before acme's flag (EU, first in line) goes back.
    loaded = load_playbook(REGIONS)
    another_eu = database_factory.create("eu2")
    api.residency_set(DEMO, "eu", environ={**regions.world.environ, "MIGRATE_TARGET_DSN": another_eu})
    us_wrong = {**regions.environ, "MIGRATE_US_TARGET_DSN": another_eu}
    swapped = api.environments(loaded, us_wrong, "pytest")
    with pytest.raises(ResidencyRefused):
        engine_rollback(swapped, build_plan(loaded).tenants, "pre-copy", discard_writes_since_cutover=True)
    assert json.loads(regions.world.flag_file.read_text()) == flags
    for tenant, home in HOME.items():
        assert rows_of(regions.dsn[home], tenant) == source_rows(regions.world, tenant)
    result = api.rollback(
        REGIONS,
        None,
        "pre-copy",
        all_tenants=True,
        discard_writes_since_cutover=True,
        environ=regions.environ,
    )
    assert {r.tenant for r in result.steps} == set(HOME)
    for tenant in HOME:
        assert rows_of(regions.dsn["eu"], tenant) == rows_of(regions.dsn["us"], tenant) == 0
    for region in ("eu", "us"):
        done = [d for a, _t, d in ledger_rows(regions.dsn[region]) if a == "rollback_finished"]
        assert len(done) == 1 and {x.split(":")[0] for x in done[0]["reverted"]} == {
            t for t, home in HOME.items() if home == region
        }


def test_a_regional_target_without_a_recorded_region_is_refused_with_the_command_to_record_it(
    regions: Regions,
) -> None:
    """Nothing recorded: the run refuses, naming 'migrate residency set … --region eu'; nothing written."""
    with pytest.raises(ResidencyRefused) as caught:
        api.run(REGIONS, environ=regions.environ)
    assert "has no recorded region" in caught.value.message
    assert (
        caught.value.hint is not None and f"migrate residency set {REGIONS} --region eu" in caught.value.hint
    )
    assert control_tables(regions.dsn["eu"]) == control_tables(regions.dsn["us"]) == 0


def test_a_copy_of_a_target_does_not_carry_its_region(
    regions: Regions, database_factory: DatabaseFactory
) -> None:
    """A database made from the EU target (CREATE DATABASE … TEMPLATE) carries EU's record, but not its
    claim: reached through EU's variable it is refused, naming the database the record was made on."""
    regions.record_both()
    eu_name = str(psycopg.conninfo.conninfo_to_dict(regions.dsn["eu"])["dbname"])
    copy = database_factory.create("copy", template=eu_name)
    environ = {**regions.environ, "MIGRATE_EU_TARGET_DSN": copy}
    with pytest.raises(ResidencyRefused) as caught:
        api.run(REGIONS, ["acme"], environ=environ)
    assert "made on another database" in caught.value.message and eu_name in caught.value.message
    assert caught.value.hint is not None and "--change" in caught.value.hint
    assert rows_of(copy, "acme") == 0


def test_a_source_that_declares_another_region_is_refused_and_the_others_go_on(
    regions: Regions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """acme's own database says migrate.region = 'us' while the playbook says eu: acme is refused in its
    session (exit 2), no row of it moves; the US tenants are migrated."""
    regions.record_both()
    name = str(psycopg.conninfo.conninfo_to_dict(regions.world.source_dsn("acme"))["dbname"])
    with psycopg.connect(regions.world.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET migrate.region = 'us'").format(sql.Identifier(name)))
    result = api.run(REGIONS, environ=regions.environ)
    outcomes = {t.tenant: t.outcome for t in result.tenants}
    assert outcomes["acme"] == "refused", outcomes
    assert "declares region us" in str(result.tenants[0].error)
    assert rows_of(regions.dsn["eu"], "acme") == rows_of(regions.dsn["us"], "acme") == 0
    assert cli(regions.environ, monkeypatch, "run", str(REGIONS)) == 2


# ----------------------------------------------------------------------------- residency set
def test_residency_set_refuses_to_change_a_recorded_region_without_change_and_ledgers_the_change(
    regions: Regions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the one target of demo.yaml: eu is recorded and ledgered; us is refused (exit 2) until --change,
    which is ledgered with what it replaces; the record itself refuses UPDATE and DELETE."""
    env = regions.world.environ
    first = api.residency_set(DEMO, "eu", environ=env)
    assert (first.target, first.region, first.already, first.previous) == ("default", "eu", False, None)
    assert api.residency_set(DEMO, "eu", environ=env).already
    assert cli(env, monkeypatch, "residency", "set", str(DEMO), "--region", "us") == 2
    with pytest.raises(ArgumentError) as caught:
        api.residency_set(DEMO, "us", environ=env)
    assert "already recorded as region eu" in caught.value.message
    changed = api.residency_set(DEMO, "us", change=True, environ=env)
    assert changed.previous is not None and changed.previous.region == "eu"
    recorded = [d for a, _t, d in ledger_rows(regions.world.target_dsn) if a == "residency_recorded"]
    assert [(d["region"], d["previous"] and d["previous"]["region"]) for d in recorded] == [
        ("eu", None),
        ("us", "eu"),
    ]
    for statement in (
        "UPDATE migrate_control.residency SET region = 'eu'",
        "DELETE FROM migrate_control.residency",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            scalar(regions.world.target_dsn, statement)
    assert api.ledger(DEMO, environ=env).failure is None


def test_one_target_without_regions_needs_no_record_but_obeys_one(regions: Regions) -> None:
    """demo.yaml (one target, no region) runs on a database that records nothing; once the database
    records eu, its US tenants are refused before anything is written, and its EU tenant goes."""
    world = regions.world
    env = world.environ
    assert api.run(DEMO, ["acme"], environ=env).ok
    api.residency_set(DEMO, "eu", environ=env)
    before = len(ledger_rows(world.target_dsn))
    with pytest.raises(ResidencyRefused) as caught:
        api.run(DEMO, environ=env)
    assert "tenant 'globex' is in region us" in caught.value.message
    assert len(ledger_rows(world.target_dsn)) == before
    assert rows_of(world.target_dsn, "globex") == 0
    assert api.run(DEMO, ["acme"], environ=env).ok  # already done: nothing to refuse


# ----------------------------------------------------------------------------- the evidence
def test_the_residency_report_passes_and_fails_after_a_row_of_an_eu_tenant_is_put_in_the_us_target(
    regions: Regions, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Per tenant: its rows there and 0 on the other target (exit 0); one EU row inserted into the US
    database by hand: exit 1, naming tenant, target and table."""
    regions.record_both()
    assert api.run(REGIONS, environ=regions.environ).ok
    report = api.residency_report(REGIONS, environ=regions.environ)
    assert report.ok, report.findings
    by_tenant = {r.tenant: r for r in report.tenants}
    for tenant, home in HOME.items():
        assert (by_tenant[tenant].target, by_tenant[tenant].rows) == (
            home,
            rows_of(regions.dsn[home], tenant),
        )
        assert dict(by_tenant[tenant].elsewhere) == {"us" if home == "eu" else "eu": 0}
    assert cli(regions.environ, monkeypatch, "residency", "report", str(REGIONS)) == 0
    capsys.readouterr()
    with psycopg.connect(regions.dsn["us"], autocommit=True) as conn:
        conn.execute("INSERT INTO app.organizations (tenant_id, id, name) VALUES ('acme', 999, 'by hand')")
    assert cli(regions.environ, monkeypatch, "residency", "report", str(REGIONS), "--json") == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False
    acme = next(t for t in data["tenants"] if t["tenant"] == "acme")
    assert acme["elsewhere"] == {"us": 1} and acme["target"] == "eu"
    assert (
        len(data["findings"]) == 1
        and "tenant acme (region eu) has 1 row(s) on target us" in data["findings"][0]
    )
    assert "organizations 1" in data["findings"][0]


def test_the_report_says_when_a_target_does_not_carry_its_region_or_its_role_cannot_see_every_row(
    regions: Regions, pg_admin_dsn: str
) -> None:
    """Not recorded: a finding; counted as a role subject to RLS: a finding (its zeros prove nothing)."""
    api.residency_set(REGIONS, "eu", environ=regions.environ)
    report = api.residency_report(REGIONS, environ=regions.environ)
    assert not report.ok
    assert any("declared for region us but carries no recorded region" in f for f in report.findings)
    api.residency_set(REGIONS, "us", environ=regions.environ)
    assert api.run(REGIONS, environ=regions.environ).ok
    assert api.residency_report(REGIONS, environ=regions.environ).ok
    role = f"tm_reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(role)))
    try:
        for dsn in regions.dsn.values():
            with psycopg.connect(dsn, autocommit=True) as conn:
                for schema in ("migrate_control", "app"):
                    grant = (
                        "GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}"
                    )
                    conn.execute(sql.SQL(grant).format(s=sql.Identifier(schema), r=sql.Identifier(role)))
        as_reader = {
            f"MIGRATE_{r.upper()}_TARGET_DSN": make_conninfo(d, user=role) for r, d in regions.dsn.items()
        }
        report = api.residency_report(REGIONS, environ={**regions.environ, **as_reader})
        assert [f for f in report.findings if "subject to row-level security" in f], report.findings
    finally:
        for dsn in regions.dsn.values():
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# ----------------------------------------------------------------------------- status and the rest
def test_status_reads_every_target_with_a_region_column_and_a_region_filter(
    regions: Regions, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """status shows every region's tenants from their own targets; --region us shows the US ones only."""
    regions.record_both()
    assert api.run(REGIONS, ["acme"], environ=regions.environ).ok
    status = api.status(REGIONS, environ=regions.environ)
    assert {t.tenant: (t.region, t.state) for t in status.tenants} == {
        "acme": ("eu", "done"),
        "globex": ("us", "not started"),
        "initech": ("us", "not started"),
    }
    assert [(t.name, t.recorded_region) for t in status.targets] == [("eu", "eu"), ("us", "us")]
    assert status.next is not None and status.next.command == f"migrate run {REGIONS}"
    only_us = api.status(REGIONS, regions=["us"], environ=regions.environ)
    assert [t.tenant for t in only_us.tenants] == ["globex", "initech"]
    with pytest.raises(ArgumentError):
        api.status(REGIONS, regions=["mars"], environ=regions.environ)
    assert cli(regions.environ, monkeypatch, "status", str(REGIONS), "--region", "eu", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert [(t["tenant"], t["region"], t["target"]) for t in data["tenants"]] == [("acme", "eu", "eu")]


def test_the_ledger_of_each_region_stays_in_its_target_and_isolation_check_runs_on_each(
    regions: Regions, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ledger show needs --region with two targets and shows that region's entries; isolation-check with
    the playbook checks both targets."""
    regions.record_both()
    assert api.run(REGIONS, environ=regions.environ).ok
    with pytest.raises(ArgumentError):
        api.ledger(REGIONS, environ=regions.environ)
    eu = api.ledger(REGIONS, region="eu", environ=regions.environ)
    assert eu.failure is None and {e.entry.tenant for e in eu.entries} == {None, "acme"}
    checked = api.isolation_check_targets(REGIONS, app_role="postgres", probe=False, environ=regions.environ)
    assert [t.target for t in checked.targets] == ["eu", "us"]
    assert all(t.report.tables for t in checked.targets)


def test_the_consolidation_report_runs_per_target(regions: Regions, tmp_path: Path) -> None:
    """An e-mail of acme (EU) and globex (US) collides in demo.yaml's one target, not across regions."""
    with psycopg.connect(regions.world.source_dsn("globex"), autocommit=True) as conn:
        conn.execute("UPDATE users SET email = 'user1@acme.example' WHERE id = 1")
    unique = ["users.email"]
    one = api.schema_generate(DEMO, out=tmp_path / "one", unique_across=unique, environ=regions.environ)
    assert not one.ok and any(n.rule == "unique-across-tenants-collision" for n in one.errors)
    two = api.schema_generate(REGIONS, out=tmp_path / "two", unique_across=unique, environ=regions.environ)
    assert two.ok, [n.detail for n in two.errors]
    assert {n.target for n in two.notes if n.rule == "sequence-shared"} == {"eu", "us"}


def test_cli_commands_read_the_region_options(
    regions: Regions, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI: residency set/report, ledger --region, plan by region (exit codes as documented)."""
    env = regions.environ
    assert cli(env, monkeypatch, "residency", "set", str(REGIONS), "--region", "eu") == 0
    assert cli(env, monkeypatch, "residency", "set", str(REGIONS), "--region", "mars") == 2
    assert cli(env, monkeypatch, "residency", "set", str(REGIONS), "--region", "us") == 0
    out = capsys.readouterr().out
    assert "now carries region eu" in out and "now carries region us" in out
    assert cli(env, monkeypatch, "run", str(REGIONS)) == 0
    assert cli(env, monkeypatch, "ledger", "verify", str(REGIONS), "--region", "us") == 0
    assert cli(env, monkeypatch, "ledger", "show", str(REGIONS)) == 2
    assert cli(env, monkeypatch, "plan", str(REGIONS)) == 0
    assert "targets, by region: eu" in capsys.readouterr().out


def test_residency_arguments_are_checked_before_any_connection(tmp_path: Path) -> None:
    """A bad --region or --tenant is named at once, against targets that do not answer."""
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    closed = f"postgresql://postgres@127.0.0.1:{port}/x"
    environ = {
        "MIGRATE_EU_TARGET_DSN": closed,
        "MIGRATE_US_TARGET_DSN": closed,
        "MIGRATE_SOURCE_DSN_TEMPLATE": closed + "{tenant}",
        "MIGRATE_FLAG_FILE": str(tmp_path / "flags.json"),
    }
    calls: list[tuple[Any, tuple[Any, ...], dict[str, Any], str]] = [
        (api.residency_set, (REGIONS, "mars"), {}, "--region"),
        (api.residency_set, (REGIONS, "EU!"), {}, "--region"),
        (api.residency_report, (REGIONS, ["acmee"]), {}, "--tenant"),
        (api.status, (REGIONS,), {"regions": ["mars"]}, "--region"),
        (api.ledger, (REGIONS,), {}, "--region"),
        (api.isolation_check_targets, (REGIONS,), {"region": "mars", "app_role": "app"}, "--region"),
    ]
    for call, args, kwargs, where in calls:
        started = time.monotonic()
        with pytest.raises(ArgumentError) as caught:
            call(*args, environ=environ, **kwargs)
        assert caught.value.where == where, (call, caught.value)
        assert time.monotonic() - started < 2.0, "checked only after trying to connect"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_steps_extra_target_connection_goes_through_the_guard_too(regions: Regions) -> None:
    """A tenant's session opened on EU's database; then the DSN reaches the US database (a failover,
    a changed DNS name): the next connection a step opens (a copy's second stream, the cut-over's
    snapshot) is refused before anything is written on it."""
    from uuid import uuid4

    from migrate.engine.session import tenant_session

    regions.record_both()
    loaded = load_playbook(REGIONS)
    env = api.environments(loaded, regions.environ, "pytest").first
    acme = next(t for t in loaded.tenants if t.id == "acme")
    with tenant_session(env, acme, uuid4()) as ctx:
        assert ctx.connect_target is not None
        ctx.connect_target().close()  # the same database: let through
        env.connect_target = lambda: psycopg.connect(regions.dsn["us"], autocommit=True)
        with pytest.raises(ResidencyRefused) as caught:
            ctx.connect_target()
    assert "region eu" in caught.value.message and "recorded as region us" in caught.value.message
