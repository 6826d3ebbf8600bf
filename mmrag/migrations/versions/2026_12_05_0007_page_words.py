"""page_words: where each page's words are (mmrag.layout), for search highlights and cited regions

Pages indexed before have no row: they answer searches and questions as before, without highlights or regions,
until they are indexed again (`mmrag delete`, then `mmrag index`) and their words are read.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 02:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'page_words',
        sa.Column('page_id', sa.Integer(), nullable=False),
        sa.Column('words', sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ['page_id'], ['pages.id'], name=op.f('fk_page_words_page_id_pages'), ondelete='CASCADE'
        ),
        sa.PrimaryKeyConstraint('page_id', name=op.f('pk_page_words')),
    )


def downgrade() -> None:
    op.drop_table('page_words')
