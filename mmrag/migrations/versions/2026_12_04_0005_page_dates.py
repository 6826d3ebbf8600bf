"""page_dates: the dates each page's text holds, for the search filters date_from and date_to

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 21:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

BATCH = 1000
pages = sa.table("pages", sa.column("id", sa.Integer), sa.column("text", sa.Text))
page_dates = sa.table("page_dates", sa.column("page_id", sa.Integer), sa.column("date", sa.Date))


def upgrade() -> None:
    op.create_table(
        'page_dates',
        sa.Column('page_id', sa.Integer(), nullable=False),
        sa.Column('date', sa.Date(), nullable=False),
        sa.ForeignKeyConstraint(
            ['page_id'], ['pages.id'], name=op.f('fk_page_dates_page_id_pages'), ondelete='CASCADE'
        ),
        sa.PrimaryKeyConstraint('page_id', 'date', name=op.f('pk_page_dates')),
    )
    with op.batch_alter_table('page_dates', schema=None) as batch_op:
        batch_op.create_index('ix_page_dates_date', ['date'], unique=False)

    # The pages indexed already get their dates as a job would record them (the analyzer of this code).
    from mmrag.analysis import page_dates as dates_in

    connection = op.get_bind()
    last = 0
    while True:
        rows = connection.execute(
            sa.select(pages.c.id, pages.c.text).where(pages.c.id > last).order_by(pages.c.id).limit(BATCH)
        ).all()
        if not rows:
            break
        found = [{"page_id": page_id, "date": day} for page_id, text in rows for day in dates_in(text or "")]
        if found:
            connection.execute(sa.insert(page_dates), found)
        last = rows[-1][0]


def downgrade() -> None:
    with op.batch_alter_table('page_dates', schema=None) as batch_op:
        batch_op.drop_index('ix_page_dates_date')
    op.drop_table('page_dates')
