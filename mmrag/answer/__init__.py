"""Answerers by kind and the one factory that builds them.

    ANSWERERS.create(kind, settings)          → Answerer; kinds: extractive, transformers, openai
    build_answerer(settings)                  → the configured Answerer, or ModelUnavailableError
    build_answerer_or_extractive(settings)    → (Answerer, None), or (ExtractiveAnswerer, why the model is off)

Implementations: extractive (quotes page lines, no model), vlm (transformers image-text-to-text in-process),
openai_compat (HTTP chat completions); prompt holds the shared prompt and the citation checker. The two VLM answerers
also describe an image (protocols.Describes: alt text for mmrag.captions); the extractive one cannot. Factories import
their modules when called, so importing this package stays light (no torch, no transformers).

Answer backends raise mmrag.errors.AnswererError and its subclasses; a model that cannot be loaded raises
mmrag.errors.ModelUnavailableError instead, at build time.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mmrag.config import AnswererSettings
from mmrag.errors import ModelUnavailableError
from mmrag.protocols import Answerer
from mmrag.registry import Registry

if TYPE_CHECKING:
    from mmrag.answer.extractive import ExtractiveAnswerer
    from mmrag.answer.openai_compat import OpenAICompatAnswerer
    from mmrag.answer.vlm import TransformersVlmAnswerer

__all__ = [
    "ANSWERERS",
    "build_answerer",
    "build_answerer_or_extractive",
]

log = logging.getLogger(__name__)

ANSWERERS: Registry[Answerer] = Registry("answerer kind")


def build_answerer(settings: AnswererSettings) -> Answerer:
    """The answerer `settings.kind` names; a model that cannot be loaded raises ModelUnavailableError."""
    return ANSWERERS.create(settings.kind, settings)


def build_answerer_or_extractive(settings: AnswererSettings) -> tuple[Answerer, str | None]:
    """The configured answerer and None, or the extractive answerer and why the configured one is off.

    Only an unavailable model falls back; a wrong setting (ConfigError) still fails loudly.
    """
    try:
        return build_answerer(settings), None
    except ModelUnavailableError as exc:
        from mmrag.answer.extractive import ExtractiveAnswerer

        reason = f"{settings.kind} answerer is off, answering extractively: {exc}"
        log.warning("%s", reason)
        return ExtractiveAnswerer(), reason


@ANSWERERS.register("extractive")
def _extractive(settings: AnswererSettings) -> ExtractiveAnswerer:
    from mmrag.answer.extractive import ExtractiveAnswerer

    return ExtractiveAnswerer()


@ANSWERERS.register("transformers")
def _transformers(settings: AnswererSettings) -> TransformersVlmAnswerer:
    from mmrag.answer.vlm import load_vlm

    return load_vlm(
        settings.model,
        device=settings.device,
        dtype=settings.dtype,
        max_new_tokens=settings.max_new_tokens,
        max_image_side=settings.max_image_side,
        image_token_budget=settings.image_token_budget,
        page_text_chars=settings.page_text_chars,
    )


@ANSWERERS.register("openai")
def _openai(settings: AnswererSettings) -> OpenAICompatAnswerer:
    from mmrag.answer.openai_compat import OpenAICompatAnswerer
    from mmrag.answer.vlm import DEFAULT_GPU_MODEL

    return OpenAICompatAnswerer(
        base_url=settings.base_url,
        # `vllm serve Qwen/Qwen2.5-VL-3B-Instruct` serves it under that id; Ollama and llama.cpp need model set.
        model=settings.model or DEFAULT_GPU_MODEL,
        api_key=settings.api_key.get_secret_value() if settings.api_key else None,
        timeout_s=settings.timeout_s,
        max_retries=settings.max_retries,
        max_new_tokens=settings.max_new_tokens,
        max_image_side=settings.max_image_side,
        image_token_budget=settings.image_token_budget,
        page_text_chars=settings.page_text_chars,
    )
