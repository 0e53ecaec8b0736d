"""Load a playbook (and its inventory) from YAML with file:line errors.

ruamel.yaml's round-trip loader keeps the line of every key and item, so a
pydantic error such as ``phases.1.steps.0.kind`` becomes
``playbooks/wave-1.yaml:14: phases[1].steps[0].kind: unknown step kind 'bakfill'``
with a hint of what to write instead. Pure apart from reading the files.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from migrate.errors import PlaybookError
from migrate.log import redact
from migrate.playbook.model import (
    STEP_KINDS,
    STEP_SPECS,
    Cutover,
    Inventory,
    LedgerSettings,
    Playbook,
    RollbackPoint,
    SchemaSettings,
    Tenant,
    step_id,
)

Loc = tuple[str | int, ...]
_SECRET_KEYS = {"dsn", "url", "password", "dsn_template", "token", "source_dsn"}
# A connection string or URL where a variable's name goes: scheme://… or key=value pairs.
_LOOKS_LIKE_DSN = re.compile(r"://|\b(?:host|dbname|user|password)\s*=")

_STEP_MODELS: dict[str, type[BaseModel]] = {spec.kind_name(): spec for spec in STEP_SPECS}


@dataclass(frozen=True)
class SourceMap:
    """Where each key and item of one YAML file stands (1-based lines)."""

    path: Path
    lines: Mapping[Loc, int]

    def line_of(self, loc: Loc) -> int:
        """The line of the deepest known part of ``loc`` (1 for the whole file)."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return 1

    def where(self, loc: Loc) -> str:
        dotted = format_loc(loc)
        return f"{self.path}:{self.line_of(loc)}" + (f": {dotted}" if dotted else "")


@dataclass(frozen=True)
class LoadedPlaybook:
    """A validated playbook with its resolved tenants and where things stand in its files."""

    path: Path
    playbook: Playbook
    tenants: tuple[Tenant, ...]
    digest: str  # the "playbook version": see normalised_digest()
    source_map: SourceMap
    tenant_where: Mapping[str, str] = field(default_factory=dict)

    def where(self, *loc: str | int) -> str:
        return self.source_map.where(tuple(loc))

    def resolve(self, relative: str) -> Path:
        """A path written in the playbook, relative to the playbook's folder."""
        return (self.path.parent / relative).resolve()


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _read_yaml(path: Path) -> tuple[Any, SourceMap, bytes]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise PlaybookError(
            f"no such file: {path}", hint="give the path of a playbook, e.g. playbooks/demo.yaml"
        ) from exc
    except OSError as exc:
        raise PlaybookError(f"cannot read {path}: {exc.strerror}") from exc
    yaml = YAML(typ="rt")
    try:
        doc = yaml.load(raw)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = (mark.line + 1) if mark is not None else 1
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise PlaybookError(
            f"not valid YAML: {problem}",
            where=f"{path}:{line}",
            hint="check the indentation and quoting on that line (keys are 'name: value')",
        ) from exc
    lines: dict[Loc, int] = {}
    data = _plain(doc, (), lines)
    return data, SourceMap(path, lines), raw


def _plain(node: Any, loc: Loc, lines: dict[Loc, int]) -> Any:
    """Turn ruamel's commented containers into plain ones, noting each line."""
    if isinstance(node, CommentedMap):
        out: dict[Any, Any] = {}
        for key, value in node.items():
            key_line, _col = node.lc.key(key)
            lines[(*loc, str(key))] = key_line + 1
            out[key] = _plain(value, (*loc, str(key)), lines)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for index, value in enumerate(node):
            item_line, _col = node.lc.item(index)
            lines[(*loc, index)] = item_line + 1
            items.append(_plain(value, (*loc, index), lines))
        return items
    return node


def _candidates(annotation: Any) -> Iterator[Any]:
    """Unwrap Annotated, Optional, unions and tuples down to their member types."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        yield from _candidates(typing.get_args(annotation)[0])
    elif origin is dict:
        yield from _candidates(typing.get_args(annotation)[1])
    elif origin in (typing.Union, types.UnionType, tuple, list):
        for arg in typing.get_args(annotation):
            if arg is not Ellipsis:
                yield from _candidates(arg)
    else:
        yield annotation


def _is_mapping(annotation: Any) -> bool:
    """Whether a field is a mapping by key (``targets: {eu: …}``), under Optional or Annotated."""
    origin = typing.get_origin(annotation)
    if origin is dict:
        return True
    if origin in (typing.Annotated, typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return any(_is_mapping(a) for a in (args[:1] if origin is typing.Annotated else args))
    return False


def _model_at(root: type[BaseModel], data: Any, loc: Loc) -> type[BaseModel] | None:
    """The model class that the value at ``loc`` is validated against, if any."""
    model: type[BaseModel] | None = root
    node = data
    keyed = False  # the part before was a mapping of models by key ('targets:'): this part is a key
    for part in loc:
        if keyed:
            keyed = False
            node = node.get(part) if isinstance(node, dict) else None
            continue
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and model is not None and "kind" in node:
                model = _STEP_MODELS.get(str(node["kind"]), model)
            elif isinstance(node, dict) and "rollback_point" in node:
                model = RollbackPoint
            continue
        if model is None or not isinstance(node, dict) or part not in node:
            continue  # a union tag in pydantic's loc, not a key of the data
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        info = fields.get(part)
        node = node[part]
        if info is None:
            return None
        models = [c for c in _candidates(info.annotation) if isinstance(c, type) and issubclass(c, BaseModel)]
        keyed = bool(models) and isinstance(node, dict) and _is_mapping(info.annotation)
        model = (models[0] if keyed else _chosen(models, node)) if models else None
    return model


def _chosen(models: Sequence[type[BaseModel]], node: Any) -> type[BaseModel]:
    """The member of a tagged union that ``node`` names by a literal field (``provider: unleash``),
    else the first (the one whose tag is the default)."""
    if isinstance(node, dict):
        for model in models:
            for name, info in model.model_fields.items():
                key = info.alias or name
                tagged = typing.get_origin(info.annotation) is typing.Literal and key in node
                if tagged and node[key] in typing.get_args(info.annotation):
                    return model
    return models[0]


def _data_loc(data: Any, loc: Loc) -> Loc:
    """Drop pydantic's union tags from ``loc``, keeping only real keys and indexes."""
    out: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(part, int) and isinstance(node, list) and part < len(node):
            node = node[part]
            out.append(part)
        elif isinstance(part, str) and isinstance(node, dict) and part in node:
            node = node[part]
            out.append(part)
    return tuple(out)


def _allowed_fields(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _explain(error: ErrorDetails, data: Any, root: type[BaseModel]) -> tuple[Loc, str, str | None]:
    """One pydantic error as (loc in the data, message, hint)."""
    kind = error["type"]
    loc = _data_loc(data, tuple(error["loc"]))
    if kind == "extra_forbidden":
        name = str(error["loc"][-1])
        parent = _model_at(root, data, loc[:-1])
        allowed = _allowed_fields(parent)
        close = difflib.get_close_matches(name, allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        if name.lower() in _SECRET_KEYS:
            hint += "DSNs and passwords never go in a playbook: name an environment variable instead; "
        hint += f"allowed here: {', '.join(allowed)}" if allowed else "remove it"
        return loc, f"unknown field '{name}'", hint
    if kind == "unknown_step_kind":
        given = error["input"].get("kind") if isinstance(error["input"], dict) else None
        close = difflib.get_close_matches(str(given), STEP_KINDS, n=1)
        hint = (f"did you mean '{close[0]}'? " if close else "") + (
            "write 'kind:' with one of " + ", ".join(STEP_KINDS) + ", or 'rollback_point: NAME'"
        )
        what = f"unknown step kind '{given}'" if given else "a step needs 'kind:'"
        return (*loc, "kind") if given else loc, what, hint
    if kind == "missing":
        name = str(error["loc"][-1])
        parent = _model_at(root, data, loc)
        info = parent.model_fields.get(name) if parent else None
        if parent is not None and info is None:  # looked up by alias
            info = next((f for f in parent.model_fields.values() if f.alias == name), None)
        desc = info.description if info and info.description else None
        return loc, f"missing field '{name}'", f"add '{name}: …'" + (f" ({desc})" if desc else "")
    # An item of a list is described by its list's field: tables[1] by 'tables'.
    field_loc = loc if not loc or isinstance(loc[-1], str) else loc[:-1]
    parent = _model_at(root, data, field_loc[:-1]) if field_loc else None
    info = None
    if parent is not None and field_loc and isinstance(field_loc[-1], str):
        info = parent.model_fields.get(str(field_loc[-1]))
    about: str | None = info.description if info and info.description else None
    message = error["msg"].removeprefix("Value error, ")
    given = error.get("input")
    pasted = isinstance(given, str) and _LOOKS_LIKE_DSN.search(given) is not None
    if field_loc and str(field_loc[-1]).endswith("_env") and pasted:
        # A DSN or URL pasted where a variable's name goes: never echo it (it may hold a password).
        name = str(field_loc[-1])
        return (
            loc,
            f"'{name}' names an environment variable, and this is a connection string or URL",
            f"write the variable's name (e.g. '{name}: MIGRATE_TARGET_DSN') and export the value in it; "
            "DSNs and passwords never go in a playbook",
        )
    if "input" in error and not isinstance(given, dict | list):
        message += f" (got {redact(repr(given))})"
    return loc, message, about


def _validate(model: type[BaseModel], data: Any, source_map: SourceMap) -> BaseModel:
    if not isinstance(data, dict):
        raise PlaybookError(
            "the file must be a YAML mapping (keys such as 'name:', 'target:', 'phases:')",
            where=f"{source_map.path}:1",
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # A broken item also makes its container "too short": report the item only.
        locs = [tuple(e["loc"]) for e in errors]
        errors = [
            e
            for e in errors
            if not any(len(o) > len(e["loc"]) and o[: len(e["loc"])] == tuple(e["loc"]) for o in locs)
        ]
        # An unknown key usually explains a "missing" one next to it (dsn: vs dsn_env:); of a
        # union's failed members, the one that got deepest into the data says the most.
        errors.sort(key=lambda e: (e["type"] != "extra_forbidden", -len(_data_loc(data, tuple(e["loc"])))))
        loc, message, hint = _explain(errors[0], data, model)
        if len(errors) > 1:
            more = f"{len(errors) - 1} more problem(s) after this one"
            hint = f"{hint}; {more}" if hint else more
        raise PlaybookError(message, where=source_map.where(loc), hint=hint) from None


def _semantic_problems(pb: Playbook, tenants: Sequence[Tenant]) -> Iterator[tuple[Loc, str, str]]:
    """Problems no single field shows: duplicates and missing sources."""
    seen_phases: set[str] = set()
    seen_points: set[str] = set()
    for p_index, phase in enumerate(pb.phases):
        if phase.name in seen_phases:
            yield (
                ("phases", p_index, "name"),
                f"duplicate phase '{phase.name}'",
                ("give every phase its own name"),
            )
        seen_phases.add(phase.name)
        seen_steps: set[str] = set()
        for s_index, item in enumerate(phase.steps):
            if isinstance(item, RollbackPoint):
                if item.rollback_point in seen_points:
                    yield (
                        ("phases", p_index, "steps", s_index, "rollback_point"),
                        (f"duplicate rollback point '{item.rollback_point}'"),
                        "rollback points name one place in the playbook: rename one of them",
                    )
                seen_points.add(item.rollback_point)
                continue
            sid = step_id(item)
            if sid in seen_steps:
                yield (
                    ("phases", p_index, "steps", s_index),
                    (f"two steps in phase '{phase.name}' are both '{sid}'"),
                    "add 'id: SOMETHING-UNIQUE' to one of them",
                )
            seen_steps.add(sid)
    declared: dict[str, int] = {}
    for w_index, wave in enumerate(pb.waves):
        if wave.name in declared:
            yield ("waves", w_index, "name"), f"duplicate wave '{wave.name}'", "give every wave its own name"
        declared.setdefault(wave.name, w_index)
    if pb.waves:
        for t_index, tenant in enumerate(tenants):
            if tenant.wave not in declared:
                close = difflib.get_close_matches(tenant.wave, list(declared), n=1)
                yield (
                    ("tenants", t_index, "wave"),
                    f"tenant '{tenant.id}' is in wave '{tenant.wave}', which 'waves:' does not list",
                    (f"did you mean '{close[0]}'? " if close else "")
                    + f"the waves are: {', '.join(declared)}",
                )
    if pb.source.dsn_template_env is None:
        for t_index, tenant in enumerate(tenants):
            if tenant.source_dsn_env is None:
                yield (
                    ("tenants", t_index, "id"),
                    f"tenant '{tenant.id}' has no source database",
                    (
                        "set 'source: {dsn_template_env: MIGRATE_SOURCE_DSN_TEMPLATE}' for all tenants, "
                        "or 'source_dsn_env: VAR' on this tenant"
                    ),
                )


def _target_problems(pb: Playbook, tenants: Sequence[Tenant]) -> Iterator[tuple[Loc, str, str]]:
    """Where the tenants go: one ``target:`` or ``targets:`` by region, and a target for every tenant."""
    if pb.target is None and pb.targets is None:
        yield (
            (),
            "say where the tenants go: 'target:' (one shared database) or 'targets:' (one per region)",
            "write 'target: {dsn_env: MIGRATE_TARGET_DSN}', or 'targets: {eu: {dsn_env: MIGRATE_EU_DSN}, "
            "us: {dsn_env: MIGRATE_US_DSN}}' to keep each region's tenants in its own database",
        )
        return
    if pb.target is not None and pb.targets is not None:
        yield (
            ("targets",),
            "both 'target:' and 'targets:' are set",
            "keep one: 'target:' for one shared database, 'targets:' for one per region",
        )
        return
    if pb.targets is not None:
        for region, target in pb.targets.items():
            if target.region is not None and target.region != region:
                yield (
                    ("targets", region, "region"),
                    f"the target under 'targets.{region}' says 'region: {target.region}'",
                    f"the key is the region under 'targets:': remove 'region:' or move the target "
                    f"under '{target.region}:'",
                )
        by_env: dict[str, str] = {}
        for region, target in pb.targets.items():
            other = by_env.setdefault(target.dsn_env, region)
            if other != region:
                yield (
                    ("targets", region, "dsn_env"),
                    f"targets '{other}' and '{region}' both read {target.dsn_env}: two regions would share "
                    "one database",
                    f"give region '{region}' a variable of its own, e.g. MIGRATE_{region.upper()}_DSN"
                    if re.fullmatch(r"[a-z0-9_]+", region)
                    else f"give region '{region}' a variable of its own",
                )
    names = pb.targets_by_name()
    regional = pb.targets is not None
    for t_index, tenant in enumerate(tenants):
        found = names.get(pb.target_name_of(tenant))
        if found is not None and (found.region is None or found.region == tenant.region):
            continue
        where: Loc = ("tenants", t_index, "region")
        if regional:
            close = difflib.get_close_matches(tenant.region, list(names), n=1)
            yield (
                where,
                f"tenant '{tenant.id}' is in region '{tenant.region}', and no target holds that region",
                (f"did you mean '{close[0]}'? " if close else "")
                + f"the targets' regions are: {', '.join(names)}; add 'targets: {{{tenant.region}: "
                "{dsn_env: …}}' for it, or correct the tenant's region",
            )
        else:
            assert pb.target is not None
            yield (
                where,
                f"tenant '{tenant.id}' is in region '{tenant.region}', but the target holds region "
                f"'{pb.target.region}' only",
                "give each region its own target under 'targets:' (by region), or remove 'region:' from "
                "'target:' if one database may hold every region",
            )


def _targets_without_region(data: Any, source_map: SourceMap) -> None:
    """A ``targets:`` key that is empty or null names no region: said before pydantic's 'not a string'."""
    targets = data.get("targets") if isinstance(data, dict) else None
    if not isinstance(targets, dict):
        return
    for key in targets:
        if key is None or (isinstance(key, str) and not key.strip()):
            raise PlaybookError(
                "a target without a region: every key under 'targets:' is the region its tenants are in",
                where=f"{source_map.path}:{source_map.line_of(('targets', str(key)))}: targets",
                hint="write the region as the key, e.g. 'targets: {eu: {dsn_env: MIGRATE_EU_DSN}}'",
            )


def _mode_problems(pb: Playbook) -> Iterator[tuple[Loc, str, str]]:
    """Steps that need the online mode, app roles, or an order the mode implies."""
    online = pb.cutover.mode == "online"
    seen: list[str] = []  # kinds so far, in playbook order
    for p_index, phase in enumerate(pb.phases):
        for s_index, item in enumerate(phase.steps):
            if isinstance(item, RollbackPoint):
                continue
            loc: Loc = ("phases", p_index, "steps", s_index, "kind")
            if item.capture and not online:
                yield (
                    loc,
                    f"step kind '{item.kind}' works on change capture, which an offline playbook has none of",
                    "write 'cutover: {mode: online}' (the backfill then opens change capture), "
                    "or remove the step",
                )
            if item.freezes and not pb.source.app_roles:
                yield (
                    loc,
                    f"step kind '{item.kind}' freezes the source, but the playbook names no "
                    "application roles",
                    "write 'source: {…, app_roles: [ROLE, …]}' with the roles the application writes as",
                )
            if online and item.kind == "freeze":
                yield (
                    loc,
                    "an online playbook freezes the source in its cutover step, for at most "
                    "cutover.max_freeze",
                    "remove the freeze step (it belongs to 'cutover: {mode: offline}' playbooks)",
                )
            if online and item.kind == "validate" and "cutover" not in seen:
                yield (
                    loc,
                    "a validate step before the cut-over of an online playbook compares a source that is "
                    "still being written",
                    "the cutover step validates under the freeze: move validate after it, or remove it",
                )
            if online and item.cuts_over and item.kind != "cutover" and "cutover" not in seen:
                yield (
                    loc,
                    "in an online playbook the cutover step flips the flag, after the freeze and validation",
                    "remove this flag step, or put it after the cutover step",
                )
            if item.kind in ("catchup", "cutover") and "backfill" not in seen:
                yield (
                    loc,
                    f"step kind '{item.kind}' must come after the backfill",
                    "move it after the backfill",
                )
            plain = [t.name for t in pb.targets_by_name().values() if t.distributed != "citus"]
            if item.citus_only and plain:
                yield (
                    loc,
                    f"step kind '{item.kind}' works on a Citus target only, and target(s) "
                    f"{', '.join(plain)} are plain PostgreSQL",
                    "write 'distributed: citus' in the target if it is a Citus coordinator, "
                    "or remove the step",
                )
            if item.kind == "finalise" and "cutover" not in seen:
                yield loc, "finalise must come after the cutover step", "move it after the cutover step"
            if item.kind == "freeze" and "backfill" in seen:
                yield (
                    loc,
                    "the freeze must come before the backfill, so the copy and its validation see a source "
                    "nobody writes",
                    "move the freeze step before the backfill",
                )
            seen.append(item.kind)
    if online and "cutover" not in seen:
        yield (
            ("cutover", "mode"),
            "an online playbook needs a cutover step (after the backfill) to end its change capture",
            "add '- {kind: cutover, flag: FLAG}' in the phase after the copy",
        )
    if online and not pb.source.app_roles:
        yield (
            ("cutover", "mode"),
            "an online cut-over freezes the application's writes on the source, but the playbook names "
            "no application roles",
            "write 'source: {…, app_roles: [ROLE, …]}' with the roles the application writes as",
        )


def _raise_first(problems: Iterator[tuple[Loc, str, str]], source_map: SourceMap) -> None:
    for loc, message, hint in problems:
        raise PlaybookError(message, where=source_map.where(loc), hint=hint)


def _duplicate_tenants(tenants: Sequence[Tenant]) -> Iterator[tuple[Loc, str, str]]:
    first: dict[str, int] = {}
    for index, tenant in enumerate(tenants):
        if tenant.id in first:
            yield (
                ("tenants", index, "id"),
                f"duplicate tenant id '{tenant.id}'",
                (f"it is already tenants[{first[tenant.id]}]: remove or rename one"),
            )
        first.setdefault(tenant.id, index)


_LATER_FIELDS: tuple[tuple[tuple[str, ...], object], ...] = (
    (("targets",), None),
    (("target", "region"), None),
    (("target", "tenant_context"), "session"),
    (("target", "app_role"), None),
    (("targets", "*", "app_role"), None),
    (("target", "distributed"), None),
    (("targets", "*", "distributed"), None),
    (("ledger",), LedgerSettings().model_dump(mode="json", by_alias=True)),
    (("source", "app_roles"), []),
    (("source", "max_connections"), 8),
    (("cutover",), Cutover().model_dump(mode="json", by_alias=True)),
    (("schema",), SchemaSettings().model_dump(mode="json", by_alias=True)),
)
"""Fields added after playbooks were in use, with the default that leaves a playbook's version as it was."""


def normalised_digest(pb: Playbook, tenants: Sequence[Tenant]) -> str:
    """sha256 of what the playbook says, not how it is written.

    Comments, whitespace, key order and flow vs block style do not change it;
    any change of substance (a tenant, a step, a setting, the inventory's
    tenants) does. The ledger records it as the playbook's version.
    """
    playbook = pb.model_dump(mode="json", by_alias=True, exclude={"tenants"})
    # Fields added later count only once they differ from their default: a playbook that does not
    # use them keeps the version its runs accepted (no --replan forced by an upgrade).
    for path, default in _LATER_FIELDS:
        *parents, leaf = path
        nodes: list[Any] = [playbook]
        for key in parents:  # "*": every entry of a mapping (each target under 'targets:')
            found = [n.get(key) for n in nodes if isinstance(n, dict)] if key != "*" else []
            if key == "*":
                found = [v for n in nodes if isinstance(n, dict) for v in n.values()]
            nodes = found
        for node in nodes:
            if isinstance(node, dict) and leaf in node and node[leaf] == default:
                node.pop(leaf)
    body = {"playbook": playbook, "tenants": [t.model_dump(mode="json") for t in tenants]}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def load_playbook(path: Path | str) -> LoadedPlaybook:
    """Read, validate and resolve a playbook; raise PlaybookError with file:line."""
    path = Path(path)
    data, source_map, _raw = _read_yaml(path)
    _targets_without_region(data, source_map)
    pb = typing.cast(Playbook, _validate(Playbook, data, source_map))
    if (pb.tenants is None) == (pb.inventory is None):
        raise PlaybookError(
            "say which tenants to move: either 'tenants:' (a list) or 'inventory:' (a file)",
            where=source_map.where(("tenants",) if pb.tenants else ()),
            hint="write 'tenants: [{id: acme}, …]' or 'inventory: ../inventory/tenants.yaml', not both",
        )
    tenants_map = source_map
    if pb.inventory is not None:
        inv_path = (path.parent / pb.inventory).resolve()
        if not inv_path.exists():
            raise PlaybookError(
                f"inventory file {inv_path} does not exist",
                where=source_map.where(("inventory",)),
                hint="write a path relative to the playbook's folder",
            )
        inv_data, tenants_map, _inv_raw = _read_yaml(inv_path)
        inventory = typing.cast(Inventory, _validate(Inventory, inv_data, tenants_map))
        tenants = inventory.tenants
    else:
        assert pb.tenants is not None
        tenants = pb.tenants
    _raise_first(_duplicate_tenants(tenants), tenants_map)
    problems = (
        list(_target_problems(pb, tenants)) + list(_semantic_problems(pb, tenants)) + list(_mode_problems(pb))
    )
    for loc, message, hint in problems:
        where_map = tenants_map if loc and loc[0] == "tenants" else source_map
        raise PlaybookError(message, where=where_map.where(loc), hint=hint)
    tenant_where = {t.id: tenants_map.where(("tenants", i)) for i, t in enumerate(tenants)}
    return LoadedPlaybook(
        path=path,
        playbook=pb,
        tenants=tuple(tenants),
        digest=normalised_digest(pb, tenants),
        source_map=source_map,
        tenant_where=tenant_where,
    )
