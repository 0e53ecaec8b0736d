"""The public sample database pagila (tests/data/pagila, PostgreSQL licence) as a tenant's source.

Its schema is pagila's own dump, loaded as it is but for what PostgreSQL 15 (the suite's
server) lacks, each swapped for the nearest 15 has: ``uuidv7()`` (PostgreSQL 18) becomes
``gen_random_uuid()``, a ``VIRTUAL`` generated column (18) is ``STORED``, and the
``vector`` extension (pgvector, not installed here) gives way to a ``real[]`` embedding
without its HNSW index. Owners are dropped (the suite's superuser is not ``postgres``).
pagila's data files are not available: ``pagila_data.sql`` makes each tenant's rows.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg

DATA = Path(__file__).parent / "data" / "pagila"


def pagila_schema() -> str:
    """pagila's schema with the PostgreSQL 15 substitutions above."""
    text = (DATA / "pagila-schema.sql").read_text()
    text = text.replace("uuidv7()", "gen_random_uuid()").replace(") VIRTUAL", ") STORED")
    text = text.replace("CREATE EXTENSION IF NOT EXISTS vector WITH SCHEMA public;", "")
    text = re.sub(r"COMMENT ON EXTENSION vector IS '[^']*';", "", text)
    text = text.replace("public.vector(20)", "real[]")
    text = re.sub(r"CREATE INDEX film_embedding_embedding_hnsw_idx [^;]*;", "", text)
    return re.sub(r"ALTER [A-Z ]+ OWNER TO postgres;", "", text)


def load_rows(conn: psycopg.Connection[Any], number: int) -> None:
    """Tenant ``number``'s rows (1, 2, 3: all different) into a database with pagila's schema."""
    with conn.transaction():
        psycopg.ClientCursor(conn).execute((DATA / "pagila_data.sql").read_text(), {"k": number})
