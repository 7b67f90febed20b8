"""worklist: study states, findings, regions, first reads, reviews, audit log; instance files; job claims

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite rebuilds the table inside the migration's transaction (no half-applied ALTERs)
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("state", sa.String(24), nullable=False, server_default="new"))
        batch.add_column(sa.Column("accession_number", sa.String(64), nullable=True))
        batch.add_column(sa.Column("state_since", sa.DateTime(timezone=True), nullable=False,
                                   server_default=sa.func.current_timestamp()))
        batch.create_index("ix_studies_state", ["state"])
        batch.create_index("ix_studies_accession_number", ["accession_number"])
    # studies screened before the worklist existed get the state their route implies
    op.execute("UPDATE studies SET state = CASE WHEN status <> 'screened' THEN status "
               "WHEN route IN ('review', 'urgent') THEN 'awaiting_review' ELSE 'screened' END")
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("path", sa.Text, nullable=True))
        batch.add_column(sa.Column("member", sa.Text, nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(64), nullable=True))

    op.create_table(
        "findings",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("study_instance_uid", sa.String(64), sa.ForeignKey("studies.study_instance_uid"), nullable=False),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("positive", sa.Boolean, nullable=False),
        sa.Column("operating_point", sa.Float, nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
    )
    op.create_index("ix_findings_study_instance_uid", "findings", ["study_instance_uid"])
    op.create_table(
        "regions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("study_instance_uid", sa.String(64), sa.ForeignKey("studies.study_instance_uid"), nullable=False),
        sa.Column("region_id", sa.String(64), nullable=False),
        sa.Column("finding", sa.String(64), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("frame", sa.Integer, nullable=False),
        sa.Column("bbox", sa.JSON, nullable=False),
        sa.Column("centroid", sa.JSON, nullable=False),
        sa.Column("area_mm2", sa.Float, nullable=True),
    )
    op.create_index("ix_regions_study_instance_uid", "regions", ["study_instance_uid"])
    op.create_table(
        "first_reads",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=True),
        sa.Column("accession_number", sa.String(64), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_first_reads_study_instance_uid", "first_reads", ["study_instance_uid"])
    op.create_index("ix_first_reads_accession_number", "first_reads", ["accession_number"])
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("study_instance_uid", sa.String(64), sa.ForeignKey("studies.study_instance_uid"), nullable=False),
        sa.Column("region_id", sa.String(64), nullable=False),
        sa.Column("finding", sa.String(64), nullable=False),
        sa.Column("verdict", sa.String(24), nullable=False),
        sa.Column("reviewer", sa.String(128), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("frame", sa.Integer, nullable=False),
        sa.Column("bbox", sa.JSON, nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_reviews_study_instance_uid", "reviews", ["study_instance_uid"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("study_key", sa.String(32), nullable=True),
        sa.Column("detail", sa.JSON, nullable=False),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_study_key", "audit_log", ["study_key"])


def downgrade() -> None:
    for table in ("audit_log", "reviews", "first_reads", "regions", "findings"):
        op.drop_table(table)
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("claimed_by")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("member")
        batch.drop_column("path")
    with op.batch_alter_table("studies") as batch:
        batch.drop_index("ix_studies_accession_number")
        batch.drop_index("ix_studies_state")
        batch.drop_column("state_since")
        batch.drop_column("accession_number")
        batch.drop_column("state")
