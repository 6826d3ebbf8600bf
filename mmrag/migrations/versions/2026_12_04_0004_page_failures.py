"""page_failures, pages.renderer, documents.ingest_version: a bad page costs one page, and a failed file is retried
once the ingestion that failed it has changed

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 19:30:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'page_failures',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('document_id', sa.Integer(), nullable=False),
        sa.Column('page_number', sa.Integer(), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ['document_id'], ['documents.id'], name=op.f('fk_page_failures_document_id_documents'), ondelete='CASCADE'
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_page_failures')),
        sa.UniqueConstraint('document_id', 'page_number', name=op.f('uq_page_failures_document_id_page_number')),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table('pages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('renderer', sa.String(length=16), nullable=True))
    # Documents that failed before this revision keep NULL: the next job over their paths tries them again.
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ingest_version', sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.drop_column('ingest_version')
    with op.batch_alter_table('pages', schema=None) as batch_op:
        batch_op.drop_column('renderer')
    op.drop_table('page_failures')
