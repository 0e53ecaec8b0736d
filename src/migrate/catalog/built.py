"""The shared schema built once per distinct source schema in a run, not once per tenant.

``ddl.build`` is pure: the same source schema and options give the same statements.
``SharedSchemas`` keeps what it built, found again only by a source schema and options
*equal* to those it was built from (the whole reflected content compared, field by field:
the fingerprint is the content itself, so no collision can hand back another schema's
statements). Every tenant's source catalog is still read; a source whose schema differs in
anything — a column, a type, a default, a comment — is built anew.
"""

from __future__ import annotations

import threading

from migrate.catalog import ddl
from migrate.catalog.reflect import SourceSchema

KEPT = 8  # distinct source schemas remembered (a run's sources usually share one)


class SharedSchemas:
    """What ``ddl.build`` gave for each distinct (source schema, options) of one run; thread-safe."""

    def __init__(self) -> None:
        self._built: list[tuple[SourceSchema, ddl.Options, ddl.SharedSchema]] = []
        self._mutex = threading.Lock()
        self.hits = 0

    def build(self, source: SourceSchema, options: ddl.Options) -> ddl.SharedSchema:
        with self._mutex:
            for seen, opts, shared in self._built:
                if opts == options and seen == source:
                    self.hits += 1
                    return shared
        shared = ddl.build(source, options)
        with self._mutex:
            self._built = [*self._built, (source, options, shared)][-KEPT:]
        return shared
