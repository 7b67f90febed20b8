"""hl7_messages: each HL7 v2 message once per sending source and message control ID (a UNIQUE key),
with the ACK it got, so a resend to any replica, after any restart, is answered again, not stored twice

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hl7_messages",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("sending_application", sa.String(64), nullable=False),
        sa.Column("sending_facility", sa.String(64), nullable=False),
        sa.Column("control_id", sa.String(200), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("ack_code", sa.String(2), nullable=True),
        sa.Column("ack_text", sa.String(80), nullable=False),
        sa.Column("claim", sa.String(32), nullable=True),
        sa.Column("claim_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("sending_application", "sending_facility", "control_id",
                            name="uq_hl7_messages_source_control_id"),
    )


def downgrade() -> None:
    op.drop_table("hl7_messages")
