"""jobs.counts: a done job's final counts, so its unchanged items can go (they grew the database every run)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 17:30:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

# The item states as this revision knows them (mmrag.types.ItemState), written out so the migration does not
# change meaning if the code's list does.
ITEM_STATES = ("pending", "indexed", "unchanged", "duplicate", "failed")

jobs = sa.table("jobs", sa.column("id", sa.Integer), sa.column("state", sa.String), sa.column("counts", sa.JSON))
job_items = sa.table(
    "job_items", sa.column("job_id", sa.Integer), sa.column("state", sa.String), sa.column("pages", sa.Integer)
)


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('counts', sa.JSON(), nullable=True))

    # Settle the jobs that are done already, as the code now does when a job finishes (repository.settle_job):
    # their counts onto the row, their unchanged items deleted.
    connection = op.get_bind()
    done = connection.execute(sa.select(jobs.c.id).where(jobs.c.state == "done")).scalars().all()
    for job_id in done:
        counts = dict.fromkeys(ITEM_STATES, 0)
        pages = 0
        rows = connection.execute(
            sa.select(job_items.c.state, sa.func.count(), sa.func.coalesce(sa.func.sum(job_items.c.pages), 0))
            .where(job_items.c.job_id == job_id)
            .group_by(job_items.c.state)
        )
        for state, n, n_pages in rows:
            counts[state] = n
            pages += int(n_pages)
        counts["pages"] = pages
        connection.execute(sa.update(jobs).where(jobs.c.id == job_id).values(counts=counts))
        connection.execute(
            sa.delete(job_items).where(job_items.c.job_id == job_id, job_items.c.state == "unchanged")
        )


def downgrade() -> None:
    # The deleted unchanged items do not come back: a done job's counts then show none unchanged.
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('counts')
