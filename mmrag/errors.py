"""The mmrag error hierarchy; every error the library raises on purpose is one of these.

    MmragError
     ├── ConfigError                 a setting is wrong or names something unknown
     │    └── UnknownNameError       a registry lookup failed (lists the known names)
     ├── ModelUnavailableError       a model's weights cannot be loaded (says how to provide them)
     ├── BackendUnavailableError     an optional package is not installed (says which extra)
     ├── InputError                  one input file is unusable; the job records it and goes on
     │    ├── EmptyFileError
     │    ├── UnsupportedTypeError
     │    ├── CorruptFileError       truncated image, broken PDF
     │    ├── EncryptedPdfError
     │    └── TooLargeError          decompression bomb, page over the pixel limit
     ├── IndexError_                 a vector index is inconsistent with its manifest or SQL
     │    └── ManifestMismatchError
     ├── NotFoundError               a document, page or job id that does not exist
     └── CollectionBusyError         another process is writing the collection (one writer at a time)

The API maps these classes to HTTP statuses in one table.
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
            f"on a machine with network access (e.g. `huggingface-cli download ORG/NAME`), then give a local "
            f"directory (local-dir:/path) or copy the Hugging Face cache and point HF_HOME at it."
        )


class BackendUnavailableError(MmragError):
    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"{package} is not installed; install it with: pip install 'mmrag[{extra}]'")


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
    pass


class NotFoundError(MmragError):
    pass


class CollectionBusyError(MmragError):
    pass
