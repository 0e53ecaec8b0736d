"""Create or upgrade the control schema with the alembic migrations shipped in the package."""

from __future__ import annotations

from importlib.resources import files

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.pool import NullPool

from migrate.control import locks

HEAD = "0008"


def sqlalchemy_url(dsn: str) -> sa.URL:
    """A libpq URL or key=value conninfo as a SQLAlchemy URL on the psycopg 3 driver."""
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items()}
    port = params.pop("port", None)
    return sa.URL.create(
        "postgresql+psycopg",
        username=params.pop("user", None),
        password=params.pop("password", None),
        host=params.pop("host", None),
        port=int(port) if port else None,
        database=params.pop("dbname", None),
        query=params,
    )


def _config(schema: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(files("migrate.control") / "migrations"))
    cfg.attributes["schema"] = schema
    return cfg


def upgrade(dsn: str, schema: str, revision: str = "head") -> None:
    """Bring the control schema to ``revision``; safe to call on every run."""
    # NullPool: no connection may stay open, or CREATE DATABASE … TEMPLATE fails later.
    engine = sa.create_engine(sqlalchemy_url(dsn), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            # Two runners starting at once must not both create the schema.
            lock = sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))")
            connection.execute(lock, {"key": locks.UPGRADE})
            cfg = _config(schema)
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()


def downgrade(dsn: str, schema: str, revision: str) -> None:
    """Take the control schema back to ``revision`` (``base`` removes it)."""
    engine = sa.create_engine(sqlalchemy_url(dsn), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            cfg = _config(schema)
            cfg.attributes["connection"] = connection
            command.downgrade(cfg, revision)
    finally:
        engine.dispose()
