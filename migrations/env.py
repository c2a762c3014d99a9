"""Alembic environment: migrates the database named by `sqlalchemy.url`.

gateway.db.alembic_config() sets the URL; from the command line use
`alembic -c gateway/alembic.ini -x url=postgresql+psycopg://... upgrade head`.
"""
from alembic import context
from sqlalchemy import create_engine, pool

from gateway.models import Base

config = context.config
url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
