"""Schema migrations: Alembic, driven from code so `broadside db upgrade` needs no ini file."""

from __future__ import annotations

from functools import cache

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

from .config import MIGRATIONS_DIR

VERSION_TABLE = "alembic_version"  # Alembic's default, which env.py keeps


def alembic_config() -> Config:
    """Alembic's configuration without an ini file: the scripts in MIGRATIONS_DIR."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to `revision` on the engine's own connection."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


@cache
def code_heads() -> frozenset[str]:
    """The revisions the code expects (read once: the scripts do not change while it runs)."""
    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


def database_heads(engine: Engine) -> frozenset[str]:
    """The revisions the database is at (none before `broadside db upgrade`)."""
    # Read directly: a MigrationContext logs two INFO lines each time, and /readyz asks often.
    with engine.connect() as connection:
        if not inspect(connection).has_table(VERSION_TABLE):
            return frozenset()
        rows = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
        return frozenset(rows.scalars())
