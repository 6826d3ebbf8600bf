"""Quiet decoders: what native libraries print while they decode a file goes to the debug log, not the terminal."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext

log = logging.getLogger(__name__)

_STDOUT, _STDERR = 1, 2

# Redirecting fds 1 and 2 is process-wide: two windows open at once in two threads would restore each other's
# descriptors out of order, so windows are serialised (re-entrant: a window inside a window just nests).
_lock = threading.RLock()


def _new_lock_after_fork() -> None:
    # A fork while another thread held the lock would leave the child's copy held for ever.
    global _lock
    _lock = threading.RLock()


os.register_at_fork(after_in_child=_new_lock_after_fork)


def in_worker_process() -> bool:
    """Whether this is a job's worker process (one that multiprocessing started), where nothing else prints."""
    import multiprocessing

    return multiprocessing.parent_process() is not None


@contextmanager
def quiet_native(what: str, *, loggers: tuple[str, ...] = (), fds: bool | None = None) -> Iterator[None]:
    """Capture what is written to fds 1 and 2 inside the block, and log it at DEBUG, naming `what` (a file).

    Native code writes to the file descriptors directly, past Python's sys.stdout/sys.stderr, and over a progress
    bar; so the descriptors themselves point at a temporary file while the block runs and are restored in
    `finally`. Records of the Python `loggers` named (a binding's own warnings, such as pypdfium2's "init_forms()
    called on XFA pdf ..." and its pip hint) are demoted to the same debug log.

    The redirect covers the whole process, so anything another thread printed meanwhile would land in the debug
    log too. `fds=None` therefore redirects only in a job's worker process, which decodes one file at a time and
    prints nothing else; in the main process (the API's, or a job run with workers=0) only the loggers are
    demoted. Errors still propagate: what matters about a file is its exception, the recorded reason.
    """
    capture = in_worker_process() if fds is None else fds
    # Only a descriptor redirect needs the process-wide lock: without one, threads decode side by side.
    with _lock if capture else nullcontext(), ExitStack() as stack:
        relay = _Relay(what)
        for logger in _loggers_under(loggers):
            logger.addFilter(relay)
            stack.callback(logger.removeFilter, relay)
        saved = None
        try:
            if capture:
                sink = stack.enter_context(tempfile.TemporaryFile())
                saved = _redirect((_STDOUT, _STDERR), sink.fileno())
        except OSError as exc:  # a closed descriptor (a daemon), or no temporary directory: print as before
            log.debug("%s: native output not captured: %s", what, exc)
            saved = None
        if saved is None:
            try:
                yield
            finally:
                relay.emit()
            return
        try:
            yield
        finally:
            _flush_c_stdio()
            _restore(saved)
            sink.seek(0)
            chatter = sink.read().decode("utf-8", "replace").strip()
            if chatter:
                log.debug("%s: native output: %s", what, chatter)
            relay.emit()


def _redirect(fds: tuple[int, ...], target: int) -> list[tuple[int, int]]:
    _flush_python_stdio()  # what Python buffered before the block belongs on the terminal
    saved: list[tuple[int, int]] = []
    try:
        for fd in fds:
            saved.append((fd, os.dup(fd)))
        for fd in fds:
            os.dup2(target, fd)
    except OSError:
        _restore(saved)
        raise
    return saved


def _restore(saved: list[tuple[int, int]]) -> None:
    _flush_python_stdio()  # what Python code printed inside the block goes to the sink, not out later
    for fd, copy in saved:
        os.dup2(copy, fd)
        os.close(copy)


def _flush_python_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed stream
                pass


def _flush_c_stdio() -> None:
    # C stdio buffers stdout when it is not a terminal; unflushed, a native printf would surface after the restore.
    if _libc is not None:
        _libc.fflush(None)


def _load_libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)  # the symbols the process already has: libc on POSIX
    except OSError:
        return None


_libc = _load_libc() if os.name == "posix" else None


def _loggers_under(prefixes: tuple[str, ...]) -> list[logging.Logger]:
    """The existing loggers named by `prefixes` or below them (a filter only sees records logged at its logger)."""
    if not prefixes:
        return []
    existing = [
        name
        for name, logger in list(logging.Logger.manager.loggerDict.items())
        if isinstance(logger, logging.Logger) and _under(name, prefixes)
    ]
    return [logging.getLogger(name) for name in sorted({*existing, *prefixes})]


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


class _Relay(logging.Filter):
    """Drops a library's record where it was logged, to log it again here at DEBUG, naming the file, once the
    descriptors are back (logged inside the block, a debug handler on stderr would write it into the sink)."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what
        self.thread = threading.get_ident()  # only this thread's records are about `what`
        self.held: list[tuple[str, str]] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.thread:
            return True  # another thread's: its own window (if any) relays it
        self.held.append((record.name, record.getMessage()))
        return False

    def emit(self) -> None:
        for name, message in self.held:
            log.debug("%s: %s: %s", self.what, name, message)
        self.held.clear()
