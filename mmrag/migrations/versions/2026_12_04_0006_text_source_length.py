"""pages.text_source holds up to 32 characters: the OCR path that gave a page its text ("ocr_smooth+block+rapid")

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 23:10:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # PostgreSQL changes the column in place; SQLite (which does not hold a VARCHAR to its length anyway) has the
    # table copied, as batch mode does for any change of a column there.
    with op.batch_alter_table('pages', schema=None) as batch_op:
        batch_op.alter_column('text_source', existing_type=sa.String(length=16), type_=sa.String(length=32),
                              existing_nullable=False)


def downgrade() -> None:
    # A path longer than the old column keeps its first 16 characters ("ocr_smooth+block+rapid" → "ocr_smooth+block").
    pages = sa.table("pages", sa.column("text_source", sa.String))
    op.execute(
        pages.update()
        .where(sa.func.length(pages.c.text_source) > 16)
        .values(text_source=sa.func.substr(pages.c.text_source, 1, 16))
    )
    with op.batch_alter_table('pages', schema=None) as batch_op:
        batch_op.alter_column('text_source', existing_type=sa.String(length=32), type_=sa.String(length=16),
                              existing_nullable=False)
