"""OpenAICompatAnswerer against a real HTTP server in this process that speaks chat completions (JSON and SSE) and
fails on cue: retries, refusals, timeouts, and citation checking of what the "model" says."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import pytest
from PIL import Image

from mmrag.answer.openai_compat import OpenAICompatAnswerer
from mmrag.answer.prompt import CANNOT_DETERMINE, NOT_ANSWERED
from mmrag.errors import (
    AnswererRejectedError,
    AnswererServerError,
    AnswererTimeoutError,
    AnswererUnreachableError,
)
from mmrag.protocols import Answerer
from mmrag.types import Answer, RetrievedPage

QUESTION = "What was the coffee total and the invoice number?"
MAX_IMAGE_SIDE = 256


@dataclass
class Reply:
    """What the server does with one request."""

    text: str = ""  # the model's answer
    status: int = 200
    raw_body: bytes | None = None  # sent as is instead of a chat completion
    headers: dict[str, str] = field(default_factory=dict)
    deltas: list[str] | None = None  # stream these as SSE events (else the JSON completion)
    events: list[str] = field(default_factory=list)  # raw SSE data payloads sent after the deltas
    hang: bool = False  # wait (until the test ends) before answering
    hang_after_first_delta: bool = False


class ChatServer:
    """A chat-completions server on 127.0.0.1 with a script of replies; it records every request it gets."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                reply = server.replies.popleft() if server.replies else Reply(text="ok [1]")
                try:
                    server.respond(self, reply)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        # A short poll keeps shutdown() quick: it waits for the serve loop to notice.
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def respond(self, handler: BaseHTTPRequestHandler, reply: Reply) -> None:
        if reply.hang:
            self.release.wait(10)
        if reply.deltas is None:
            body = reply.raw_body
            if body is None:
                message = {"role": "assistant", "content": reply.text}
                payload = {"id": "c1", "object": "chat.completion", "choices": [{"index": 0, "message": message}]}
                body = json.dumps(payload).encode()
            handler.send_response(reply.status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(body)
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()
        # Like vLLM: a first event with only the role, a keep-alive comment, then one event per delta.
        events = [json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})]
        events += [json.dumps({"choices": [{"index": 0, "delta": {"content": delta}}]}) for delta in reply.deltas]
        handler.wfile.write(b": keep-alive\n\n")
        for number, event in enumerate([*events, *reply.events, "[DONE]"]):
            handler.wfile.write(f"data: {event}\n\n".encode())
            handler.wfile.flush()
            if reply.hang_after_first_delta and number == 1:
                self.release.wait(10)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer() as running:
        yield running


def _answerer(base_url: str, **overrides: Any) -> OpenAICompatAnswerer:
    options: dict[str, Any] = {
        "base_url": base_url,
        "model": "qwen2.5-vl",
        "api_key": "sk-test",
        "timeout_s": 5.0,
        "max_retries": 2,
        "max_new_tokens": 64,
        "max_image_side": MAX_IMAGE_SIDE,
        "first_backoff_s": 0.01,
    }
    return OpenAICompatAnswerer(**(options | overrides))


def test_answer_sends_the_prompt_with_page_images_and_checks_citations(
    server: ChatServer, pages: list[RetrievedPage]
) -> None:
    server.replies.append(Reply(text="The coffee came to 9.02 [1]; the invoice is INV-2024-0117 [7]."))
    with _answerer(server.base_url) as answerer:
        assert isinstance(answerer, Answerer) and answerer.name == "openai:qwen2.5-vl"
        answer = answerer.answer(QUESTION, pages)

    # The model cited [7] with three pages retrieved: that citation is dropped, the rest stands.
    assert answer.text == "The coffee came to 9.02 [1]; the invoice is INV-2024-0117."
    assert [(c.page_id, c.quote) for c in answer.citations] == [(pages[0].page_id, "Total 9.02")]
    assert answer.supported and answer.answerer == "openai:qwen2.5-vl"

    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    body = request["body"]
    assert (body["model"], body["stream"], body["temperature"], body["max_tokens"]) == ("qwen2.5-vl", False, 0, 64)
    (message,) = body["messages"]
    assert message["role"] == "user"
    prompt = "".join(part["text"] for part in message["content"] if part["type"] == "text")
    assert f"Question: {QUESTION}" in prompt and CANNOT_DETERMINE in prompt
    for number, page in enumerate(pages, start=1):
        assert f"Page [{number}]: {page.path}, page {page.page_number}" in prompt
    assert "Invoice number: INV-2024-0117" in prompt  # page text goes beside the image
    urls = [part["image_url"]["url"] for part in message["content"] if part["type"] == "image_url"]
    assert len(urls) == len(pages)
    for url in urls:
        prefix, encoded = url.split(",", 1)
        assert prefix == "data:image/jpeg;base64"
        image = Image.open(io.BytesIO(base64.b64decode(encoded)))
        assert image.format == "JPEG" and max(image.size) == MAX_IMAGE_SIDE  # a 595x842 page, downscaled
    kinds = [part["type"] for part in message["content"]]
    first_header = next(i for i, part in enumerate(message["content"]) if "Page [1]" in part.get("text", ""))
    assert kinds.index("image_url") == first_header + 1  # each image follows its page's header


def test_stream_reads_server_sent_events_and_checks_citations(server: ChatServer, pages: list[RetrievedPage]) -> None:
    deltas = ["The coffee", " came to 9.0", "2 [", "1] and the", " invoice is INV-2024-0117 [", "2][", "7", "]."]
    server.replies.append(Reply(deltas=deltas))
    with _answerer(server.base_url) as answerer:
        *chunks, answer = list(answerer.stream(QUESTION, pages))

    assert isinstance(answer, Answer) and all(isinstance(chunk, str) for chunk in chunks)
    assert len(chunks) > 1  # shown as it arrives, not all at the end
    assert answer.text == "The coffee came to 9.02 [1] and the invoice is INV-2024-0117 [2]."
    assert "".join(chunks) == answer.text  # type: ignore[arg-type]
    assert [c.page_id for c in answer.citations] == [pages[0].page_id, pages[1].page_id]
    assert server.requests[0]["body"]["stream"] is True


def test_stream_of_cannot_determine_shows_only_the_not_answered_text(
    server: ChatServer, pages: list[RetrievedPage]
) -> None:
    server.replies.append(Reply(deltas=["CANNOT", "_DETER", "MINE"]))
    with _answerer(server.base_url) as answerer:
        items = list(answerer.stream("What was the tip?", pages))
    assert items == [NOT_ANSWERED, Answer(NOT_ANSWERED, [], False, "openai:qwen2.5-vl")]


@pytest.mark.parametrize(
    "failure",
    [
        Reply(status=503, raw_body=b'{"error": {"message": "model is loading"}}'),
        Reply(status=429, headers={"Retry-After": "0"}),
    ],
    ids=["503", "429"],
)
def test_overload_and_server_errors_are_retried(server: ChatServer, pages: list[RetrievedPage], failure: Reply) -> None:
    server.replies.extend([failure, Reply(text="Total 9.02 [1].")])
    with _answerer(server.base_url) as answerer:
        answer = answerer.answer("What was the total?", pages)
    assert answer.supported and answer.text == "Total 9.02 [1]."
    assert len(server.requests) == 2


def test_a_stream_is_retried_before_its_first_byte(server: ChatServer, pages: list[RetrievedPage]) -> None:
    server.replies.extend([Reply(status=502), Reply(deltas=["Total 9.02 [1]."])])
    with _answerer(server.base_url) as answerer:
        *_, answer = list(answerer.stream("What was the total?", pages))
    assert isinstance(answer, Answer) and answer.supported
    assert len(server.requests) == 2


def test_server_errors_give_up_after_max_retries(server: ChatServer, pages: list[RetrievedPage]) -> None:
    server.replies.extend([Reply(status=500, raw_body=b"boom")] * 3)
    with _answerer(server.base_url, max_retries=2) as answerer, pytest.raises(AnswererServerError) as raised:
        answerer.answer("What was the total?", pages)
    assert len(server.requests) == 3
    assert raised.value.status_code == 500
    assert f"{server.base_url}/chat/completions" in str(raised.value) and "HTTP 500: boom" in str(raised.value)


def test_a_client_error_is_not_retried_and_says_why(server: ChatServer, pages: list[RetrievedPage]) -> None:
    error = {"error": {"message": "The model `qwen2.5-vl` does not exist.", "type": "NotFoundError"}}
    server.replies.append(Reply(status=400, raw_body=json.dumps(error).encode()))
    with _answerer(server.base_url) as answerer, pytest.raises(AnswererRejectedError) as raised:
        answerer.answer("What was the total?", pages)
    assert len(server.requests) == 1
    assert raised.value.status_code == 400
    message = str(raised.value)
    assert server.base_url in message and "HTTP 400: The model `qwen2.5-vl` does not exist." in message


def test_a_server_that_hangs_times_out_without_retrying(server: ChatServer, pages: list[RetrievedPage]) -> None:
    server.replies.append(Reply(hang=True))
    started = time.monotonic()
    with _answerer(server.base_url, timeout_s=0.5) as answerer, pytest.raises(AnswererTimeoutError) as raised:
        answerer.answer("What was the total?", pages)
    assert time.monotonic() - started < 3
    assert len(server.requests) == 1
    assert server.base_url in str(raised.value) and "0.5 s" in str(raised.value)


def test_a_stream_that_stalls_times_out(server: ChatServer, pages: list[RetrievedPage]) -> None:
    server.replies.append(Reply(deltas=["Total 9.02 [1]", " and more"], hang_after_first_delta=True))
    with _answerer(server.base_url, timeout_s=0.5) as answerer, pytest.raises(AnswererTimeoutError, match="stalled"):
        list(answerer.stream("What was the total?", pages))


def test_an_error_event_mid_stream_is_an_error(server: ChatServer, pages: list[RetrievedPage]) -> None:
    server.replies.append(Reply(deltas=["Total"], events=[json.dumps({"error": {"message": "CUDA out of memory"}})]))
    with _answerer(server.base_url) as answerer, pytest.raises(AnswererServerError, match="CUDA out of memory"):
        list(answerer.stream("What was the total?", pages))


def test_a_reply_that_is_not_a_chat_completion_is_an_error(server: ChatServer, pages: list[RetrievedPage]) -> None:
    server.replies.append(Reply(raw_body=b"<html>proxy login</html>"))
    with _answerer(server.base_url) as answerer, pytest.raises(AnswererServerError, match="not a chat completion"):
        answerer.answer("What was the total?", pages)


def test_no_server_is_unreachable_after_retries(pages: list[RetrievedPage]) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}/v1"
    with _answerer(base_url, max_retries=1) as answerer, pytest.raises(AnswererUnreachableError) as raised:
        answerer.answer("What was the total?", pages)
    assert f"{base_url}/chat/completions" in str(raised.value) and "cannot connect" in str(raised.value)


def test_a_page_without_an_image_is_sent_as_text(server: ChatServer, pages: list[RetrievedPage]) -> None:
    no_image = RetrievedPage(9, 9, 1, "notes.pdf", 0.4, "Meeting notes: budget 5,000 EUR", None)
    with _answerer(server.base_url) as answerer:
        answerer.answer("What is the budget?", [pages[0], no_image])
    content = server.requests[0]["body"]["messages"][0]["content"]
    assert sum(part["type"] == "image_url" for part in content) == 1
    assert any("Page [2]: notes.pdf, page 1\nText of page [2]:\nMeeting notes" in p.get("text", "") for p in content)


def test_no_retrieved_pages_asks_the_server_nothing(server: ChatServer) -> None:
    with _answerer(server.base_url) as answerer:
        assert answerer.answer("What was the total?", []) == Answer(NOT_ANSWERED, [], False, answerer.name)
        assert list(answerer.stream("What was the total?", [])) == [NOT_ANSWERED, answerer.answer("q", [])]
    assert server.requests == []
