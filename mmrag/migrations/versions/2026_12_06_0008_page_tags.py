"""page_tags and tag_labels: zero-shot tags of photos (mmrag.tags) and a collection's own label list

Photos indexed before have no tags until `mmrag tag --collection NAME` tags them from their stored CLIP vectors.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 04:30:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'page_tags',
        sa.Column('page_id', sa.Integer(), nullable=False),
        sa.Column('tag', sa.String(length=100), nullable=False),
        sa.Column('score', sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ['page_id'], ['pages.id'], name=op.f('fk_page_tags_page_id_pages'), ondelete='CASCADE'
        ),
        sa.PrimaryKeyConstraint('page_id', 'tag', name=op.f('pk_page_tags')),
    )
    with op.batch_alter_table('page_tags', schema=None) as batch_op:
        batch_op.create_index('ix_page_tags_tag', ['tag'], unique=False)
    op.create_table(
        'tag_labels',
        sa.Column('collection_id', sa.Integer(), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('label', sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ['collection_id'], ['collections.id'], name=op.f('fk_tag_labels_collection_id_collections'),
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('collection_id', 'position', name=op.f('pk_tag_labels')),
    )


def downgrade() -> None:
    op.drop_table('tag_labels')
    with op.batch_alter_table('page_tags', schema=None) as batch_op:
        batch_op.drop_index('ix_page_tags_tag')
    op.drop_table('page_tags')
