"""The bulk indexing job, in stages with plain data between them: discover → plan (stat, hash, decide) → load
(decode/render/OCR in worker processes) → embed → write vectors and SQL; recovery and deletes beside them.

    planning.py   job items → Plan → Decision per job item (unchanged, duplicate, failed, or to load)
    loading.py    FileToLoad → LoadedFile | FileFailure, in worker processes (Loader)
    embedding.py  PendingPage → BatchVectors (each retriever's vectors, not yet stored)
    writing.py    Batch → pages in SQL, then the Committer's embed and write threads
    recovery.py   recover, stores_agree / record_agreement, repair
    job.py        IndexJob: the loop over a job's items; JobStages: the stages it is built from
    run.py        run_index → JobReport, collection_writer
    deletion.py   delete_documents

It lives in the library, not in indexer/, because the API's background jobs run the same code and api/ must
not depend on indexer/; the CLI there adds only the progress display.

Crash consistency (kill -9 at any moment, then re-run) rests on one ordering:
  1. a document and its pages are committed to SQL with status `pending`;
  2. their vectors are added to every store and the stores are flushed (each flush is atomic);
  3. one SQL transaction records the embeddings, marks the documents `indexed` and the job items done.
On start, `recover` deletes `pending` documents with their pages and removes from each store every id SQL does
not vouch for (orphans of a crash between 2 and 3), and forgets SQL records whose vectors a store lacks so they
are re-embedded from the stored page image. Vector ids are SQL page ids, never reused (AUTOINCREMENT), so a
stale vector can never be mistaken for a new page.
"""

from mmrag.indexing.deletion import delete_documents
from mmrag.indexing.embedding import input_specs
from mmrag.indexing.job import IndexJob, JobStages, NoProgress, Progress, build_lexical_ahead
from mmrag.indexing.loading import Loader, start_worker_server
from mmrag.indexing.recovery import record_agreement, recover, repair, stores_agree
from mmrag.indexing.run import JobReport, JobSummary, collection_writer, run_index
from mmrag.indexing.writing import Committer

__all__ = [
    "Committer",
    "IndexJob",
    "JobReport",
    "JobStages",
    "JobSummary",
    "Loader",
    "NoProgress",
    "Progress",
    "build_lexical_ahead",
    "collection_writer",
    "delete_documents",
    "input_specs",
    "record_agreement",
    "recover",
    "repair",
    "run_index",
    "start_worker_server",
    "stores_agree",
]
