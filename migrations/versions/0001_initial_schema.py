"""Initial schema: images, tags, the job queue and lookup metrics.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ACTIVE = sa.text("status IN ('INIT', 'PENDING', 'PULLING', 'CONVERSION', 'TRANSFER')")


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("pk", sa.Integer(), primary_key=True),
        sa.Column("system", sa.String(64), nullable=False),
        sa.Column("itype", sa.String(16), nullable=False),
        sa.Column("image_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("env", sa.JSON(), nullable=False),
        sa.Column("entrypoint", sa.JSON(), nullable=True),
        sa.Column("cmd", sa.JSON(), nullable=True),
        sa.Column("workdir", sa.Text(), nullable=True),
        sa.Column("user", sa.Text(), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("arch", sa.String(32), nullable=True),
        sa.Column("os", sa.String(32), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("private", sa.Boolean(), nullable=False),
        sa.Column("user_acl", sa.JSON(), nullable=False),
        sa.Column("group_acl", sa.JSON(), nullable=False),
        sa.Column("last_pull", sa.Float(), nullable=False),
        sa.Column("expiration", sa.Float(), nullable=True),
        sa.UniqueConstraint("system", "image_id", name="uq_images_system_image_id"),
    )
    op.create_table(
        "tags",
        sa.Column("system", sa.String(64), primary_key=True),
        sa.Column("itype", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(512), primary_key=True),
        sa.Column("image_pk", sa.Integer(), sa.ForeignKey("images.pk", ondelete="CASCADE"), nullable=False),
    )
    op.create_index("ix_tags_image_pk", "tags", ["image_pk"])
    op.create_table(
        "jobs",
        sa.Column("pk", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("system", sa.String(64), nullable=False),
        sa.Column("itype", sa.String(16), nullable=False),
        sa.Column("tag", sa.String(512), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=False),
        sa.Column("bytes_done", sa.BigInteger(), nullable=False),
        sa.Column("bytes_total", sa.BigInteger(), nullable=False),
        sa.Column("user", sa.String(256), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("gid", sa.BigInteger(), nullable=False),
        sa.Column("user_acl", sa.JSON(), nullable=False),
        sa.Column("group_acl", sa.JSON(), nullable=False),
        sa.Column("credentials", sa.JSON(), nullable=True),
        sa.Column("import_path", sa.Text(), nullable=True),
        sa.Column("image_id", sa.String(64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("not_before", sa.Float(), nullable=False),
        sa.Column("worker", sa.String(128), nullable=True),
        sa.Column("heartbeat", sa.Float(), nullable=True),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("finished", sa.Float(), nullable=True),
    )
    op.create_index("ix_jobs_claim", "jobs", ["status", "not_before"])
    op.create_index("uq_jobs_active_tag", "jobs", ["system", "itype", "tag"], unique=True,
                    postgresql_where=ACTIVE, sqlite_where=ACTIVE)
    op.create_table(
        "lookups",
        sa.Column("pk", sa.Integer(), primary_key=True),
        sa.Column("user", sa.String(256), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("system", sa.String(64), nullable=False),
        sa.Column("itype", sa.String(16), nullable=False),
        sa.Column("tag", sa.String(512), nullable=False),
        sa.Column("image_id", sa.String(64), nullable=False),
        sa.Column("time", sa.Float(), nullable=False),
    )
    op.create_index("ix_lookups_system", "lookups", ["system"])


def downgrade() -> None:
    op.drop_table("lookups")
    op.drop_table("jobs")
    op.drop_table("tags")
    op.drop_table("images")
