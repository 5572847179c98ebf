"""Alembic environment for linewatch's main store.

Migrations run only through :func:`linewatch.sinks.db_migrate.upgrade_database` (``linewatch db upgrade`` and the
upgrade at start), which passes an open connection inside a transaction in ``config.attributes``: no
alembic.ini, no URL in a config file (it may carry a password), and the caller decides about locking and
backups. SQLite gets batch mode ("move and copy"), since it cannot ALTER most things in place. On PostgreSQL
the migrations' SQL runs in UTC (``SET LOCAL TIME ZONE``): the roll-ups they fill have UTC hours, and
``date_trunc('hour', ...)`` truncates in the session's zone, which a server in India would have at +05:30.
"""

from __future__ import annotations

from alembic import context

from linewatch.sinks.db_schema import Base

connection = context.config.attributes.get("connection")
if context.is_offline_mode() or connection is None:
    raise RuntimeError("linewatch migrations run through sinks.db_migrate.upgrade_database (linewatch db upgrade)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SET LOCAL TIME ZONE 'UTC'")
    context.run_migrations()
