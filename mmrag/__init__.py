"""mmrag: self-hostable multimodal retrieval and document Q&A. The names the CLI, the API and users call.

    settings = Settings()                                  # MMRAG_* environment, nested with __
    services = build_services(settings)                    # the composition root: SQL, models, collections
    report = run_index(services, [Path("docs")])           # the bulk job (resumable, crash-consistent)
    hits = search(services, "default", text="total due")   # every retriever, fused
    answer = ask(services, answerer, "What is the total?") # top pages -> an answerer -> cited answer
    services.close()

Retrievers are plug-ins (RETRIEVERS, Retriever, SingleVectorRetriever); errors all derive from MmragError.
Names load on first use, so `import mmrag` stays light (no torch, no models) and worker processes that import one
module do not pay for the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmrag.answer import ANSWERERS, build_answerer, build_answerer_or_extractive
    from mmrag.captions import DescribeReport, Described, describe_page, describe_pages
    from mmrag.config import Settings
    from mmrag.documents import (
        collection_names,
        delete_document,
        get_document,
        index_sizes,
        indexed_models,
        list_documents,
    )
    from mmrag.embedders import ModelChoice, model_choices
    from mmrag.errors import (
        CaptionsUnavailableError,
        ConfigError,
        IndexError_,
        InputError,
        MmragError,
        ModelMismatchError,
        ModelUnavailableError,
        NotFoundError,
        VectorBackendUnavailableError,
    )
    from mmrag.evaluation import evaluate, load_questions, plot_recall, write_questions
    from mmrag.indexing import JobReport, delete_documents, run_index, start_worker_server
    from mmrag.ingest import load_image
    from mmrag.jobs import job_status, latest_job_status
    from mmrag.near_duplicates import DuplicatesReport, SimilarPages, near_duplicate_groups, similar_pages
    from mmrag.protocols import Answerer
    from mmrag.qa import Retrieved, Token, ask, ask_stream
    from mmrag.retrieval import retrieved_pages, search
    from mmrag.retrievers import RETRIEVERS, Embedders, Retriever, SingleVectorRetriever, load_embedders
    from mmrag.services import Services, build_services
    from mmrag.tags import TagCount, read_labels, retag, tag_counts
    from mmrag.testsets import generate_questions
    from mmrag.types import Answer, Citation, Hit, RetrievedPage, SearchFilters, SearchResult, Tag

_WHERE = {
    "ANSWERERS": "mmrag.answer",
    "Answer": "mmrag.types",
    "Answerer": "mmrag.protocols",
    "CaptionsUnavailableError": "mmrag.errors",
    "Citation": "mmrag.types",
    "ConfigError": "mmrag.errors",
    "DescribeReport": "mmrag.captions",
    "Described": "mmrag.captions",
    "DuplicatesReport": "mmrag.near_duplicates",
    "Embedders": "mmrag.retrievers",
    "Hit": "mmrag.types",
    "IndexError_": "mmrag.errors",
    "InputError": "mmrag.errors",
    "JobReport": "mmrag.indexing",
    "MmragError": "mmrag.errors",
    "ModelChoice": "mmrag.embedders",
    "ModelMismatchError": "mmrag.errors",
    "ModelUnavailableError": "mmrag.errors",
    "NotFoundError": "mmrag.errors",
    "RETRIEVERS": "mmrag.retrievers",
    "Retrieved": "mmrag.qa",
    "RetrievedPage": "mmrag.types",
    "Retriever": "mmrag.retrievers",
    "SearchFilters": "mmrag.types",
    "SearchResult": "mmrag.types",
    "Services": "mmrag.services",
    "Settings": "mmrag.config",
    "SimilarPages": "mmrag.near_duplicates",
    "SingleVectorRetriever": "mmrag.retrievers",
    "Tag": "mmrag.types",
    "TagCount": "mmrag.tags",
    "Token": "mmrag.qa",
    "VectorBackendUnavailableError": "mmrag.errors",
    "ask": "mmrag.qa",
    "ask_stream": "mmrag.qa",
    "build_answerer": "mmrag.answer",
    "build_answerer_or_extractive": "mmrag.answer",
    "build_services": "mmrag.services",
    "collection_names": "mmrag.documents",
    "delete_document": "mmrag.documents",
    "delete_documents": "mmrag.indexing",
    "describe_page": "mmrag.captions",
    "describe_pages": "mmrag.captions",
    "evaluate": "mmrag.evaluation",
    "generate_questions": "mmrag.testsets",
    "get_document": "mmrag.documents",
    "index_sizes": "mmrag.documents",
    "indexed_models": "mmrag.documents",
    "job_status": "mmrag.jobs",
    "latest_job_status": "mmrag.jobs",
    "list_documents": "mmrag.documents",
    "load_embedders": "mmrag.retrievers",
    "load_image": "mmrag.ingest",
    "load_questions": "mmrag.evaluation",
    "model_choices": "mmrag.embedders",
    "near_duplicate_groups": "mmrag.near_duplicates",
    "plot_recall": "mmrag.evaluation",
    "read_labels": "mmrag.tags",
    "retag": "mmrag.tags",
    "retrieved_pages": "mmrag.retrieval",
    "run_index": "mmrag.indexing",
    "search": "mmrag.retrieval",
    "similar_pages": "mmrag.near_duplicates",
    "start_worker_server": "mmrag.indexing",
    "tag_counts": "mmrag.tags",
    "write_questions": "mmrag.evaluation",
}

__all__ = [
    "ANSWERERS",
    "Answer",
    "Answerer",
    "CaptionsUnavailableError",
    "Citation",
    "ConfigError",
    "DescribeReport",
    "Described",
    "DuplicatesReport",
    "Embedders",
    "Hit",
    "IndexError_",
    "InputError",
    "JobReport",
    "MmragError",
    "ModelChoice",
    "ModelMismatchError",
    "ModelUnavailableError",
    "NotFoundError",
    "RETRIEVERS",
    "Retrieved",
    "RetrievedPage",
    "Retriever",
    "SearchFilters",
    "SearchResult",
    "Services",
    "Settings",
    "SimilarPages",
    "SingleVectorRetriever",
    "Tag",
    "TagCount",
    "Token",
    "VectorBackendUnavailableError",
    "ask",
    "ask_stream",
    "build_answerer",
    "build_answerer_or_extractive",
    "build_services",
    "collection_names",
    "delete_document",
    "delete_documents",
    "describe_page",
    "describe_pages",
    "evaluate",
    "generate_questions",
    "get_document",
    "index_sizes",
    "indexed_models",
    "job_status",
    "latest_job_status",
    "list_documents",
    "load_embedders",
    "load_image",
    "load_questions",
    "model_choices",
    "near_duplicate_groups",
    "plot_recall",
    "read_labels",
    "retag",
    "retrieved_pages",
    "run_index",
    "search",
    "similar_pages",
    "start_worker_server",
    "tag_counts",
    "write_questions",
]


def __getattr__(name: str) -> Any:
    try:
        module = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module 'mmrag' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
