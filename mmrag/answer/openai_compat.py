"""OpenAICompatAnswerer: answers through an OpenAI-compatible chat-completions server (vLLM, Ollama, llama.cpp).

One user message carries the prompt with each retrieved page's stored image as a base64 JPEG `image_url` data URL
(downscaled to the image budget first) beside its text. `answer()` makes one non-streamed request; `stream()` reads
server-sent events (`data: {...}` lines, ending with `data: [DONE]`). Connect errors, 429 and 5xx are retried with
exponential backoff (a server's Retry-After is honoured up to MAX_BACKOFF_S); other 4xx are not, since the same
request would fail again. A stream is only retried before its first byte: text already shown cannot be taken back.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from typing import TYPE_CHECKING, Any, Self

import httpx

from mmrag.answer.prompt import (
    CAPTION_MAX_TOKENS,
    CAPTION_PROMPT,
    PromptImage,
    PromptText,
    build_prompt,
    check_answer,
    checked_stream,
    clean_caption,
    fit_image,
    load_page_image,
    not_answered,
)
from mmrag.errors import (
    AnswererError,
    AnswererRejectedError,
    AnswererServerError,
    AnswererTimeoutError,
    AnswererUnreachableError,
)
from mmrag.types import Answer, RetrievedPage

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
JPEG_QUALITY = 85  # text stays legible; a 1024 px page is ~100-200 KB, a third of the PNG
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
CONNECT_TIMEOUT_S = 10.0


class OpenAICompatAnswerer:
    """An Answerer backed by `POST {base_url}/chat/completions`; one pooled HTTP client per answerer."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 2,
        max_new_tokens: int = 512,
        max_image_side: int = 1024,
        image_token_budget: int = 1024,
        page_text_chars: int = 1500,
        first_backoff_s: float = FIRST_BACKOFF_S,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.name = f"openai:{model}"
        self.max_retries = max_retries
        self.max_new_tokens = max_new_tokens
        self.max_image_side = max_image_side
        self.image_token_budget = image_token_budget
        self.page_text_chars = page_text_chars
        self.first_backoff_s = first_backoff_s
        self.timeout_s = timeout_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # The read timeout is the longest silence allowed: between SSE events when streaming, and for the whole
        # generation otherwise (the server sends nothing until it is done).
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, CONNECT_TIMEOUT_S))
        self._client = httpx.Client(timeout=timeout, headers=headers)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def answer(self, question: str, pages: Sequence[RetrievedPage]) -> Answer:
        if not pages:
            return not_answered(self.name)  # nothing to cite: no need to ask the model
        body = self.request_body(question, pages, stream=False)
        with self._send(body) as response:
            try:
                response.read()
            except httpx.TimeoutException as exc:
                raise AnswererTimeoutError(self.url, f"the reply stalled for over {self.timeout_s:g} s") from exc
            except httpx.HTTPError as exc:
                raise AnswererServerError(self.url, f"the reply broke off: {type(exc).__name__}: {exc}") from exc
            text = _completion_text(response, self.url)
        return check_answer(text, question, pages, answerer=self.name)

    def stream(self, question: str, pages: Sequence[RetrievedPage]) -> Iterator[str | Answer]:
        if not pages:
            yield from checked_stream([], question, pages, answerer=self.name)
            return
        body = self.request_body(question, pages, stream=True)
        with self._send(body) as response:
            yield from checked_stream(
                _stream_deltas(response, self.url, self.timeout_s), question, pages, answerer=self.name
            )

    def describe(self, image: Image.Image) -> str:
        """Alt text for `image` (Describes): one request, the image as a JPEG data URL as the ask path sends pages."""
        fitted = fit_image(image, max_side=self.max_image_side, token_budget=self.image_token_budget)
        content = [
            {"type": "image_url", "image_url": {"url": jpeg_data_url(fitted)}},
            {"type": "text", "text": CAPTION_PROMPT},
        ]
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": min(self.max_new_tokens, CAPTION_MAX_TOKENS),
            "temperature": 0,  # a copy described again (--force) should read the same
            "stream": False,
        }
        with self._send(body) as response:
            try:
                response.read()
            except httpx.TimeoutException as exc:
                raise AnswererTimeoutError(self.url, f"the reply stalled for over {self.timeout_s:g} s") from exc
            except httpx.HTTPError as exc:
                raise AnswererServerError(self.url, f"the reply broke off: {type(exc).__name__}: {exc}") from exc
            caption = clean_caption(_completion_text(response, self.url))
        if not caption:
            raise AnswererServerError(self.url, "the model wrote an empty caption")
        return caption

    def request_body(self, question: str, pages: Sequence[RetrievedPage], *, stream: bool) -> dict[str, Any]:
        """The chat-completions request: one user message of text parts and image_url data URLs, greedy decoding."""
        images = [
            load_page_image(page, max_side=self.max_image_side, token_budget=self.image_token_budget) for page in pages
        ]
        parts = build_prompt(
            question, pages, has_image=[image is not None for image in images], page_text_chars=self.page_text_chars
        )
        content: list[dict[str, Any]] = []
        for part in parts:
            if isinstance(part, PromptText):
                content.append({"type": "text", "text": part.text})
            elif isinstance(part, PromptImage):
                image = images[part.page_index]
                assert image is not None  # build_prompt places images only where has_image is True
                content.append({"type": "image_url", "image_url": {"url": jpeg_data_url(image)}})
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_new_tokens,
            "temperature": 0,  # answers should be reproducible and stick to the pages
            "stream": stream,
        }

    def _send(self, body: dict[str, Any]) -> closing[httpx.Response]:
        """The response to `body` with a 2xx status, after retries; the caller reads it and must close it."""
        attempt = 0
        while True:
            try:
                request = self._client.build_request("POST", self.url, json=body)
                response = self._client.send(request, stream=True)
            except httpx.ConnectError as exc:
                error: AnswererError = AnswererUnreachableError(self.url, f"cannot connect: {exc}")
                retry_after = None
            except httpx.ConnectTimeout as exc:  # before TimeoutException, its base: nothing was sent, so retry
                error = AnswererUnreachableError(self.url, f"connect timed out after {CONNECT_TIMEOUT_S:g} s: {exc}")
                retry_after = None
            except httpx.TimeoutException as exc:
                # A read that timed out: the server is up but slow; asking again would double the wait.
                reason = f"no response within {self.timeout_s:g} s ({type(exc).__name__})"
                raise AnswererTimeoutError(self.url, reason) from exc
            except httpx.HTTPError as exc:
                raise AnswererServerError(self.url, f"{type(exc).__name__}: {exc}") from exc
            else:
                if response.is_success:
                    return closing(response)
                try:
                    response.read()
                    detail = _error_detail(response)
                except httpx.HTTPError:
                    detail = response.reason_phrase  # the error body never came; the status still says enough
                finally:
                    response.close()
                status = response.status_code
                reason = f"HTTP {status}: {detail}"
                if status not in RETRYABLE_STATUS:
                    raise AnswererRejectedError(self.url, reason, status)
                error = AnswererServerError(self.url, reason, status)
                retry_after = _retry_after_s(response)
            if attempt >= self.max_retries:
                raise error
            delay = min(MAX_BACKOFF_S, retry_after if retry_after is not None else self.first_backoff_s * 2**attempt)
            attempt += 1
            log.warning("%s; retry %d of %d in %.1f s", error, attempt, self.max_retries, delay)
            time.sleep(delay)


def jpeg_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _completion_text(response: httpx.Response, url: str) -> str:
    try:
        payload = response.json()
        message = payload["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise AnswererServerError(url, f"not a chat completion: {response.text[:200]!r}") from exc
    return _content_text(message.get("content"))


def _stream_deltas(response: httpx.Response, url: str, timeout_s: float) -> Iterator[str]:
    """The text deltas of a chat-completions SSE stream, until `data: [DONE]` or the end of the body."""
    try:
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, ": keep-alive" comments, "event:" and "id:" fields
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                return
            try:
                event = json.loads(data)
            except ValueError as exc:
                raise AnswererServerError(url, f"unreadable stream event {data[:200]!r}") from exc
            if not isinstance(event, dict):
                raise AnswererServerError(url, f"unexpected stream event {data[:200]!r}")
            if "error" in event:  # vLLM and llama.cpp report failures mid-stream this way
                raise AnswererServerError(url, f"error during generation: {event['error']}")
            for choice in event.get("choices") or []:
                text = _content_text((choice.get("delta") or {}).get("content"))
                if text:
                    yield text
    except httpx.TimeoutException as exc:
        raise AnswererTimeoutError(url, f"the stream stalled for over {timeout_s:g} s") from exc
    except httpx.HTTPError as exc:  # the connection dropped mid-answer
        raise AnswererServerError(url, f"the stream broke off: {type(exc).__name__}: {exc}") from exc


def _content_text(content: object) -> str:
    """Message content as text: a string, or (some servers) a list of typed parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


def _error_detail(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(error, str):
        return error
    return response.text[:200] or response.reason_phrase


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # absent, or an HTTP date: fall back to exponential backoff
