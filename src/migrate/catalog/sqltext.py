"""Move PostgreSQL's own renderings of expressions from the source schema to the target schema.

The catalog renders a default, a check, an index or a view (``pg_get_expr``,
``pg_get_viewdef`` …) with every name outside ``search_path`` qualified by its
schema. Reflection sets ``search_path`` to ``pg_catalog`` alone, so built-ins stay
bare and everything else reads ``public.tasks`` or ``public.task_status``. This
module swaps that qualifier for the target schema — only in front of the names the
shared schema re-creates (an extension's ``public.citext`` stays where it is) and
never inside a string literal or a quoted identifier, which a plain text replace
would corrupt.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass

_TOKEN = re.compile(
    r"""
      (?P<string>[eE]'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*')
    | (?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z0-9_]*)?\$.*?\$(?P=tag)\$)
    | (?P<qident>"(?:[^"]|"")*")
    | (?P<ident>[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True)
class Token:
    kind: str  # string | dollar | qident | ident | other
    text: str

    @property
    def name(self) -> str | None:
        """The identifier this token names (folded as PostgreSQL folds it), else None."""
        if self.kind == "ident":
            return self.text.lower()
        if self.kind == "qident":
            return self.text[1:-1].replace('""', '"')
        return None


def tokens(text: str) -> Iterator[Token]:
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup if match.lastgroup != "tag" else "dollar"
        yield Token(kind or "other", match.group(0))


def quote(name: str) -> str:
    """Always-quoted identifier, as psycopg's sql.Identifier writes it."""
    return '"' + name.replace('"', '""') + '"'


def requalify(text: str, source_schema: str, target_schema: str, names: Collection[str]) -> str:
    """``source_schema.X`` becomes ``"target_schema".X`` for every X in ``names``."""
    toks = list(tokens(text))
    out: list[str] = []
    for i, tok in enumerate(toks):
        if (
            tok.name == source_schema
            and i + 2 < len(toks)
            and toks[i + 1].text == "."
            and toks[i + 2].name in names
            and (i == 0 or toks[i - 1].text != ".")
        ):
            out.append(quote(target_schema))
        else:
            out.append(tok.text)
    return "".join(out)


def canonical(text: str) -> str:
    """Every identifier quoted, so two renderings of one type compare equal as text."""
    return "".join(quote(t.name) if t.name is not None else t.text for t in tokens(text))


def find_keyword(toks: list[Token], word: str, start: int = 0) -> int:
    """Index of the first bare keyword ``word`` at or after ``start`` (-1 if none)."""
    for i in range(start, len(toks)):
        if toks[i].kind == "ident" and toks[i].text.upper() == word:
            return i
    return -1
