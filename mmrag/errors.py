"""The mmrag error hierarchy; every error the library raises on purpose is one of these.

    MmragError
     ├── ConfigError                 a setting is wrong or names something unknown
     │    └── UnknownNameError       a registry lookup failed (lists the known names)
     ├── ModelUnavailableError       a model's weights cannot be loaded (says how to provide them)
     ├── ModelDownloadError          `mmrag models pull` cannot fetch a model (offline, unreachable, refused)
     ├── BackendUnavailableError     an optional package is not installed (says which extra)
     │    └── MissingToolError       a system program ingestion runs (tesseract, pdftoppm) is not installed
     ├── InputError                  one input file is unusable; the job records it and goes on
     │    ├── EmptyFileError
     │    ├── UnsupportedTypeError
     │    ├── CorruptFileError       truncated image, broken PDF
     │    ├── EncryptedPdfError
     │    └── TooLargeError          decompression bomb, page over the pixel limit
     ├── IndexError_                 a vector index is inconsistent with its manifest or SQL
     │    └── ManifestMismatchError
     │         └── ModelMismatchError  a collection's vectors were made by another model than the configured one
     ├── VectorBackendUnavailableError  the vector database server (Qdrant) cannot be reached or refused us
     ├── NotFoundError               a document, page or job id that does not exist
     ├── CollectionBusyError         another process is writing the collection (one writer at a time)
     ├── CaptionsUnavailableError    captions need a VLM answerer; the configured one (extractive) cannot see
     └── AnswererError               an answer backend failed; the message names the server URL or the model
          ├── AnswererUnreachableError   no connection to the server (after retries)
          ├── AnswererTimeoutError       the server or the stream went silent for longer than timeout_s
          ├── AnswererRejectedError      the server refused the request (4xx other than 429): not retried
          └── AnswererServerError        5xx/429 after retries, an error event mid-stream, or a reply that is not
                                         a chat completion

A model that cannot be loaded raises ModelUnavailableError at build time, not an AnswererError. The API maps these
classes to HTTP statuses in one table (api/errors.py).
"""

from __future__ import annotations


class MmragError(Exception):
    """Base of every error mmrag raises on purpose."""


class ConfigError(MmragError):
    pass


class UnknownNameError(ConfigError):
    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind, self.name, self.known = kind, name, sorted(known)
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(self.known) or '(none)'}")


class ModelUnavailableError(MmragError):
    def __init__(self, model: str, reason: str) -> None:
        self.model = model
        super().__init__(
            f"model {model!r} cannot be loaded: {reason}. mmrag never downloads weights at run time: fetch them "
            f"with `mmrag models pull` where there is a network (or `huggingface-cli download ORG/NAME`), then "
            f"give a local directory (local-dir:/path) or copy the Hugging Face cache and point HF_HOME at it."
        )


class ModelDownloadError(MmragError):
    """Only `mmrag models pull` downloads; its failure is one sentence naming the model and the cause."""

    def __init__(self, model: str, reason: str) -> None:
        self.model = model
        super().__init__(f"cannot download {model!r}: {reason}.")


class BackendUnavailableError(MmragError):
    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"{package} is not installed; install it with: pip install 'mmrag[{extra}]'")


class MissingToolError(BackendUnavailableError):
    """A system program that ingestion runs (tesseract, poppler's pdftoppm) is not installed.

    A BackendUnavailableError, so callers and the API treat it as one.
    """

    def __init__(self, message: str) -> None:
        # BackendUnavailableError's message names a pip extra; these come from the system's package manager.
        # One plain message argument also keeps the error picklable across worker processes.
        MmragError.__init__(self, message)


class InputError(MmragError):
    """One input is unusable. `reason` is short and stable; the message says which file."""

    reason = "input error"


class EmptyFileError(InputError):
    reason = "empty file"


class UnsupportedTypeError(InputError):
    reason = "unsupported file type"


class CorruptFileError(InputError):
    reason = "corrupt file"


class EncryptedPdfError(InputError):
    reason = "encrypted PDF"


class TooLargeError(InputError):
    reason = "too large"


class IndexError_(MmragError):  # noqa: N801 - trailing underscore avoids shadowing the builtin
    pass


class ManifestMismatchError(IndexError_):
    """A store's manifest disagrees with what the caller expects; `field` names what: "model", "dim", "metric",
    "kind" or "count"."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class ModelMismatchError(ManifestMismatchError):
    """A collection's vectors of one retriever were made by another model than the configured one: vectors of two
    models cannot be compared. The message names both models and the one command that re-embeds the collection."""

    def __init__(self, collection: str, retriever: str, detail: str) -> None:
        self.collection = collection
        self.retriever = retriever
        super().__init__(
            f"collection {collection!r}: its {retriever} vectors were made by another model than the one configured "
            f"now ({detail}). Configure the model it was indexed with (`mmrag status` lists it), or re-embed every "
            f"page with the configured one: `mmrag index --reembed --collection {collection} PATH...`",
            field="model",
        )


class VectorBackendUnavailableError(MmragError):
    """The vector database server (a Qdrant server or cluster) did not answer, or refused the request (its API key,
    its state); the message names its URL and what it said."""

    def __init__(self, url: str, reason: object) -> None:
        self.url = url
        super().__init__(f"the Qdrant server at {url} cannot serve this request: {reason}")


class NotFoundError(MmragError):
    pass


class CollectionBusyError(MmragError):
    pass


class CaptionsUnavailableError(MmragError):
    """The configured answerer cannot describe an image (the extractive one has no model): captions need a VLM."""

    def __init__(self, answerer: str) -> None:
        self.answerer = answerer
        super().__init__(
            f"captions need a VLM answerer, and the answerer is {answerer!r}: set MMRAG_ANSWERER__KIND=transformers "
            "or openai"
        )


class AnswererError(MmragError):
    def __init__(self, where: str, reason: str, status_code: int | None = None) -> None:
        self.where = where  # the server URL or the model id
        self.status_code = status_code  # the HTTP status that ended it, when there was one
        super().__init__(f"answerer {where}: {reason}")


class AnswererUnreachableError(AnswererError):
    pass


class AnswererTimeoutError(AnswererError):
    pass


class AnswererRejectedError(AnswererError):
    pass


class AnswererServerError(AnswererError):
    pass
