"""Status page and Prometheus metrics: image layers, pull phases, usage per hour, counters.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # images pulled before this revision have no layer list: the page says so
    op.add_column("images", sa.Column("layers", sa.JSON(), nullable=False, server_default=sa.text("'[]'")))
    op.add_column("jobs", sa.Column("public", sa.Boolean(), nullable=True))
    op.add_column("jobs", sa.Column("started", sa.Float(), nullable=True))
    op.add_column("jobs", sa.Column("phase_started", sa.Float(), nullable=True))
    op.create_table(
        "image_usage",
        sa.Column("system", sa.String(64), primary_key=True),
        sa.Column("hour", sa.Integer(), primary_key=True),
        sa.Column("image_id", sa.String(64), primary_key=True),
        sa.Column("lookups", sa.BigInteger(), nullable=False),
        sa.Column("last", sa.Float(), nullable=False),
    )
    op.create_table(
        "counters",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("labels", sa.String(1024), primary_key=True),
        sa.Column("value", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("counters")
    op.drop_table("image_usage")
    with op.batch_alter_table("jobs") as batch:       # SQLite: the table is rebuilt, indexes kept
        batch.drop_column("phase_started")
        batch.drop_column("started")
        batch.drop_column("public")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("layers")
