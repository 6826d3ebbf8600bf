"""Quiet decoders: native output at fd level goes to the debug log, never to the terminal."""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

import pytest

from mmrag.ingest import native
from mmrag.ingest.native import quiet_native
from mmrag.ingest.pdf import PdfiumRenderer, open_pdf
from tests.factories import make_xfa_pdf

NATIVE_LOG = "mmrag.ingest.native"


def debug_lines(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == NATIVE_LOG and r.levelno == logging.DEBUG)


def test_fd_level_output_goes_to_the_debug_log(capfd: pytest.CaptureFixture[str], caplog) -> None:
    caplog.set_level(logging.DEBUG, logger=NATIVE_LOG)
    with quiet_native("some.pdf", fds=True):
        os.write(2, b"native complaint on stderr\n")
        os.write(1, b"native chatter on stdout\n")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    logged = debug_lines(caplog)
    assert "some.pdf" in logged and "native complaint on stderr" in logged and "native chatter on stdout" in logged
    # the descriptors are back: output after the block reaches the terminal again
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


@pytest.mark.skipif(native._libc is None, reason="needs the C library through ctypes")
def test_c_library_output_is_captured_even_when_buffered(capfd: pytest.CaptureFixture[str], caplog) -> None:
    caplog.set_level(logging.DEBUG, logger=NATIVE_LOG)
    libc = ctypes.CDLL(None)
    with quiet_native("c.pdf", fds=True):
        libc.puts(b"puts from C")  # stdio-buffered: only the fflush at the end of the block gets it out in time
        message = b"write(2) from C\n"
        libc.write(2, message, len(message))
    libc.fflush(None)
    assert capfd.readouterr() == ("", "")
    assert "puts from C" in debug_lines(caplog) and "write(2) from C" in debug_lines(caplog)


def test_an_error_inside_propagates_and_the_descriptors_come_back(capfd, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger=NATIVE_LOG)
    with pytest.raises(RuntimeError, match="boom"), quiet_native("bad.pdf", fds=True):
        os.write(2, b"said before failing\n")
        raise RuntimeError("boom")
    assert "said before failing" in debug_lines(caplog)
    os.write(1, b"visible\n")
    assert capfd.readouterr() == ("visible\n", "")


def test_nested_windows_restore_in_order(capfd, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger=NATIVE_LOG)
    with quiet_native("outer", fds=True):
        with quiet_native("inner", fds=True):
            os.write(2, b"inner text\n")
        os.write(2, b"outer text\n")
    assert capfd.readouterr() == ("", "")
    assert "inner: native output: inner text" in debug_lines(caplog)
    assert "outer: native output: outer text" in debug_lines(caplog)


def test_a_librarys_own_warnings_are_demoted_to_debug(capfd, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    library = logging.getLogger("somelib.sub")
    with quiet_native("x.pdf", loggers=("somelib",)):
        library.warning("binding says %s", "hello")
    library.warning("outside the block")  # the filter is gone again
    warnings = [r.getMessage() for r in caplog.records if r.name == "somelib.sub"]
    assert warnings == ["outside the block"]
    assert "x.pdf: somelib.sub: binding says hello" in debug_lines(caplog)


def test_an_xfa_pdf_renders_without_printing(tmp_path: Path, capfd, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    path = make_xfa_pdf(tmp_path / "xfa.pdf")
    with open_pdf(path) as doc:
        assert doc.get_formtype() in (3, 4)  # FORMTYPE_XFA_FULL / FORMTYPE_XFA_FOREGROUND: the chatty kind
    image = PdfiumRenderer().render(path, 1, 72)
    assert image.mode == "RGB" and image.width > 0
    assert capfd.readouterr() == ("", "")
    assert not [r for r in caplog.records if r.name.startswith("pypdfium2") and r.levelno > logging.DEBUG]
    assert "XFA support" in debug_lines(caplog) and str(path) in debug_lines(caplog)


def test_the_main_process_keeps_its_descriptors_and_other_threads_records(capfd, caplog) -> None:
    """Outside a worker process (the API's, or a job with workers=0) nothing another thread prints is swallowed:
    descriptors stay as they are, and only this thread's library records are demoted."""
    import threading

    caplog.set_level(logging.DEBUG)
    library = logging.getLogger("somelib")
    with quiet_native("main.pdf", loggers=("somelib",)):
        os.write(2, b"a server line from another part of the process\n")
        other = threading.Thread(target=library.warning, args=("another thread's warning",))
        other.start()
        other.join()
        library.warning("this thread's warning")
    assert "a server line" in capfd.readouterr().err
    warnings = [r.getMessage() for r in caplog.records if r.name == "somelib" and r.levelno == logging.WARNING]
    assert warnings == ["another thread's warning"]
    assert "main.pdf: somelib: this thread's warning" in debug_lines(caplog)


def _print_natively_in_a_worker(path: str) -> str:
    import io

    handler_out = io.StringIO()
    handler = logging.StreamHandler(handler_out)
    logging.getLogger(NATIVE_LOG).addHandler(handler)
    logging.getLogger(NATIVE_LOG).setLevel(logging.DEBUG)
    with quiet_native(path):
        os.write(2, b"chatter from native code\n")
    return handler_out.getvalue()


def test_a_worker_process_captures_native_output_by_default(capfd) -> None:
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        logged = pool.apply(_print_natively_in_a_worker, ("w.pdf",))
    assert "w.pdf: native output: chatter from native code" in logged
    assert "chatter from native code" not in capfd.readouterr().err
