"""captions: a VLM's alt text per page content (document sha256, page number), searchable with the page's text

Pages indexed before have no caption until `mmrag describe` (or POST /v1/pages/{id}/describe) writes one.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 05:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'captions',
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('page_number', sa.Integer(), nullable=False),
        sa.Column('caption', sa.Text(), nullable=False),
        sa.Column('model', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('sha256', 'page_number', name=op.f('pk_captions')),
    )


def downgrade() -> None:
    op.drop_table('captions')
