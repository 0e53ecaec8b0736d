"""The playbook loader and `migrate plan`: bad input exits 2 with file:line and a hint."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from migrate.cli.app import main
from migrate.errors import PlaybookError
from migrate.plan import build_plan
from migrate.playbook import load_playbook

ROOT = Path(__file__).resolve().parents[1]

GOOD = """\
name: t
target: {dsn_env: MIGRATE_TARGET_DSN}
source: {dsn_template_env: MIGRATE_SOURCE_DSN_TEMPLATE}
tenants:
  - id: acme
  - id: globex
phases:
  - name: copy
    steps:
      - kind: schema
      - kind: backfill
      - rollback_point: copied
      - kind: validate
"""


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> PlaybookError:
    with pytest.raises(PlaybookError) as info:
        load_playbook(write(tmp_path, text))
    return info.value


def test_a_good_playbook_loads_with_its_tenants_and_a_stable_digest(tmp_path: Path) -> None:
    """A valid playbook loads; its digest is the sha256 of its bytes, stable across loads."""
    path = write(tmp_path, GOOD)
    first, second = load_playbook(path), load_playbook(path)
    assert [t.id for t in first.tenants] == ["acme", "globex"]
    assert first.digest == second.digest and len(first.digest) == 64


def test_unknown_field_names_file_line_and_the_close_match(tmp_path: Path) -> None:
    """A typo in a key is an error on its line, suggesting the field that was meant."""
    err = load_error(tmp_path, GOOD.replace("source: {", "source: {shema: x, "))
    assert err.where is not None and err.where.startswith(f"{tmp_path / 'p.yaml'}:3: source.shema")
    assert "unknown field 'shema'" in err.message
    assert err.hint and "did you mean 'schema'" in err.hint


def test_unknown_step_kind_names_its_line_and_the_kinds(tmp_path: Path) -> None:
    """An unknown step kind points at the step's line and lists the kinds there are."""
    err = load_error(tmp_path, GOOD.replace("kind: backfill", "kind: bakfill"))
    assert err.where == f"{tmp_path / 'p.yaml'}:11: phases[0].steps[1].kind"
    assert "unknown step kind 'bakfill'" in err.message
    assert err.hint and "did you mean 'backfill'" in err.hint and "validate" in err.hint


def test_duplicate_tenant_id_names_the_second_one(tmp_path: Path) -> None:
    """Two tenants with one id are refused at the second, naming the first."""
    err = load_error(tmp_path, GOOD.replace("  - id: globex", "  - id: globex\n  - id: acme"))
    assert err.where == f"{tmp_path / 'p.yaml'}:7: tenants[2].id"
    assert err.hint and "tenants[0]" in err.hint


def test_a_tenant_id_that_is_not_a_slug_is_refused(tmp_path: Path) -> None:
    """Tenant ids are lower-case slugs: flags match them case-sensitively."""
    err = load_error(tmp_path, GOOD.replace("id: acme", "id: Acme Corp"))
    assert "tenants[0].id" in (err.where or "") and "lower-case" in err.message


def test_an_inline_dsn_is_not_a_setting_the_playbook_accepts(tmp_path: Path) -> None:
    """Secrets never live in the playbook: 'dsn:' is an unknown field, the hint says dsn_env."""
    err = load_error(tmp_path, GOOD.replace("{dsn_env: MIGRATE_TARGET_DSN}", "{dsn: postgresql://u:pw@h/db}"))
    assert "unknown field 'dsn'" in err.message and err.hint and "dsn_env" in err.hint


def test_an_unknown_field_in_an_unleash_block_lists_the_unleash_fields(tmp_path: Path) -> None:
    """The hint comes from the provider the block names, not the default one."""
    err = load_error(tmp_path, GOOD + "flags: {provider: unleash, url_envv: X}\n")
    assert err.message == "unknown field 'url_envv'"
    assert err.hint is not None and "did you mean 'url_env'?" in err.hint and "admin_token_env" in err.hint


def test_a_bad_table_entry_is_named_with_what_to_write(tmp_path: Path) -> None:
    """tables: [users, 3] points at the item and says what a table entry looks like."""
    err = load_error(tmp_path, GOOD + "tables: [users, 3]\n")
    assert err.where is not None and err.where.endswith("tables[1]")
    assert err.hint is not None and "{name: TABLE, key: [COLUMN, …]}" in err.hint


def test_waves_are_declared_once_and_every_tenant_is_in_one(tmp_path: Path) -> None:
    """A tenant in an undeclared wave is refused at its line, with the close match; so is a wave twice."""
    waves = "waves: [{name: canary}, {name: main}]\n"
    err = load_error(tmp_path, GOOD.replace("  - id: globex", "  - {id: globex, wave: mian}") + waves)
    assert err.message == "tenant 'globex' is in wave 'mian', which 'waves:' does not list"
    assert err.hint is not None and "did you mean 'main'?" in err.hint
    err = load_error(tmp_path, GOOD + "waves: [{name: main}, {name: main}]\n")
    assert err.message == "duplicate wave 'main'"
    plan = build_plan(
        load_playbook(
            write(
                tmp_path,
                GOOD.replace("  - id: globex", "  - {id: globex, wave: canary}")
                + "waves: [{name: canary}, {name: main}]\n",
            )
        )
    )
    assert [tp.tenant.id for tp in plan.tenants] == ["globex", "acme"]  # the canary first
    assert [(w.name, w.tenants) for w in plan.waves] == [("canary", ("globex",)), ("main", ("acme",))]


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    """Broken YAML is a PlaybookError with a line, not a parser traceback."""
    err = load_error(tmp_path, "name: t\ntarget: {dsn_env: X\n")
    assert re.match(rf"{re.escape(str(tmp_path / 'p.yaml'))}:\d+$", err.where or "")


def test_two_steps_with_one_id_in_a_phase_are_refused(tmp_path: Path) -> None:
    """Step keys (phase/step) must be unique: they key the step state."""
    err = load_error(
        tmp_path, GOOD.replace("      - kind: validate", "      - kind: validate\n      - kind: validate")
    )
    assert "both 'validate'" in err.message and err.hint and "id:" in err.hint


def test_plan_lists_every_tenant_step_in_order(tmp_path: Path) -> None:
    """The plan holds each tenant's steps and rollback points in playbook order."""
    plan = build_plan(load_playbook(write(tmp_path, GOOD)))
    assert [s.key for s in plan.tenants[0].steps] == [
        "copy/schema",
        "copy/backfill",
        "copy/@copied",
        "copy/validate",
    ]


@pytest.mark.parametrize("path", sorted((ROOT / "playbooks").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_playbook_loads_and_plans(path: Path) -> None:
    """Docs can't drift: every playbook in playbooks/ loads and plans."""
    plan = build_plan(load_playbook(path))
    assert plan.tenants and all(tp.steps for tp in plan.tenants)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "migrate", *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.parametrize(
    ("edit", "expect"),
    [
        (("kind: backfill", "kind: bakfill"), ":11: phases[0].steps[1].kind"),
        (("  - id: globex", "  - id: globex\n  - id: acme"), ":7: tenants[2].id"),
        (("source: {", "source: {shema: x, "), ":3: source.shema"),
    ],
    ids=["unknown-step", "duplicate-tenant", "unknown-field"],
)
def test_cli_bad_playbook_exits_2_with_location_and_hint(
    tmp_path: Path, edit: tuple[str, str], expect: str
) -> None:
    """`migrate plan` on a bad playbook: exit 2, file:line and a hint on stderr, no traceback."""
    path = write(tmp_path, GOOD.replace(*edit))
    proc = run_cli("plan", str(path))
    assert proc.returncode == 2, proc.stderr
    assert f"{path}{expect}" in proc.stderr
    assert "hint:" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_missing_dsn_variable_exits_2_naming_the_playbook_line(tmp_path: Path) -> None:
    """`migrate run` without the target DSN variable: exit 2 at the playbook line that names it."""
    path = write(tmp_path, GOOD)
    env = {"PATH": "/usr/bin:/bin", "MIGRATE_SOURCE_DSN_TEMPLATE": "postgresql://x/{tenant}"}
    proc = run_cli("run", str(path), env=env)
    assert proc.returncode == 2, proc.stderr
    assert f"{path}:2: target.dsn_env" in proc.stderr
    assert (
        "MIGRATE_TARGET_DSN is not set" in proc.stderr and "hint: export MIGRATE_TARGET_DSN=" in proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_cli_unknown_tenant_is_an_argument_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--tenant must name a tenant of the playbook; the hint lists them."""
    code = main(["plan", str(ROOT / "playbooks" / "demo.yaml"), "--tenant", "acmee"])
    err = capsys.readouterr().err
    assert code == 2 and "did you mean 'acme'" in err


def test_cli_plan_prints_each_tenant(capsys: pytest.CaptureFixture[str]) -> None:
    """`migrate plan` prints every tenant of the demo playbook with its steps."""
    assert main(["plan", str(ROOT / "playbooks" / "demo.yaml")]) == 0
    out = capsys.readouterr().out
    for tenant in ("acme", "globex", "initech"):
        assert f"tenant {tenant}" in out
    assert "rollback point 'pre-cutover'" in out


def test_readme_names_every_command() -> None:
    """Docs can't drift: every CLI command appears in README.md."""
    from migrate.cli.app import app, ledger_app

    readme = (ROOT / "README.md").read_text()
    names = [c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands]
    names += [f"ledger {c.name}" for c in ledger_app.registered_commands]
    missing = [n for n in names if f"migrate {n}" not in readme]
    assert not missing, f"README.md does not mention: {missing}"


def test_cli_usage_error_exits_2_without_an_internal_error() -> None:
    """An unknown option is a usage error (exit 2) rendered by the CLI, not a bug report."""
    proc = run_cli("run", "playbooks/demo.yaml", "--bogus")
    assert proc.returncode == 2
    assert "No such option: --bogus" in proc.stderr
    assert "internal error" not in proc.stderr


def test_the_playbook_version_ignores_comments_and_layout_but_not_substance(tmp_path: Path) -> None:
    """The digest is of what the playbook says: reformatting keeps it, a new tenant changes it."""
    base = load_playbook(write(tmp_path, GOOD, "a.yaml")).digest
    relaid = GOOD.replace(
        "tenants:\n  - id: acme\n  - id: globex\n", "# who moves\ntenants: [{id: acme}, {id: globex}]\n"
    )
    assert load_playbook(write(tmp_path, relaid, "b.yaml")).digest == base
    more = GOOD.replace("  - id: globex", "  - id: globex\n  - id: initech")
    assert load_playbook(write(tmp_path, more, "c.yaml")).digest != base


def test_an_isolate_step_on_a_plain_target_is_refused_on_its_line(tmp_path: Path) -> None:
    """The Citus-only step kind on a plain PostgreSQL target: an error at the step, naming the key;
    the same playbook with 'distributed: citus' loads."""
    text = GOOD + "      - {kind: isolate, transfer: block_writes}\n"
    err = load_error(tmp_path, text)
    assert err.where == f"{tmp_path / 'p.yaml'}:14: phases[0].steps[4].kind"
    assert "Citus target only" in err.message and "distributed: citus" in (err.hint or "")
    citus = text.replace(
        "target: {dsn_env: MIGRATE_TARGET_DSN}", "target: {dsn_env: MIGRATE_TARGET_DSN, distributed: citus}"
    )
    assert [
        s.kind
        for s in load_playbook(write(tmp_path, citus, "c.yaml")).playbook.phases[0].steps
        if hasattr(s, "kind")
    ][-1] == "isolate"
