"""Building answerers from settings: the registry, the extractive fallback, MMRAG_ANSWERER__* and a light import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mmrag.answer import ANSWERERS, build_answerer, build_answerer_or_extractive
from mmrag.answer.extractive import ExtractiveAnswerer
from mmrag.answer.openai_compat import OpenAICompatAnswerer
from mmrag.answer.vlm import TransformersVlmAnswerer
from mmrag.config import AnswererSettings, Settings
from mmrag.errors import ModelUnavailableError, UnknownNameError
from mmrag.protocols import Answerer


def test_each_kind_is_registered() -> None:
    assert ANSWERERS.names() == ["extractive", "openai", "transformers"]
    with pytest.raises(UnknownNameError, match="known: extractive, openai, transformers"):
        ANSWERERS.create("gpt", AnswererSettings())


def test_the_default_is_extractive() -> None:
    answerer = build_answerer(AnswererSettings())
    assert isinstance(answerer, ExtractiveAnswerer) and isinstance(answerer, Answerer)


def test_openai_settings_reach_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMRAG_ANSWERER__KIND", "openai")
    monkeypatch.setenv("MMRAG_ANSWERER__BASE_URL", "http://vllm:8000/v1/")
    monkeypatch.setenv("MMRAG_ANSWERER__MODEL", "qwen2.5-vl-7b")
    monkeypatch.setenv("MMRAG_ANSWERER__API_KEY", "sk-secret")
    settings = Settings().answerer
    assert "sk-secret" not in repr(settings)  # the key stays out of logs
    answerer, off = build_answerer_or_extractive(settings)
    assert off is None
    assert isinstance(answerer, OpenAICompatAnswerer) and isinstance(answerer, Answerer)
    assert (answerer.url, answerer.name) == ("http://vllm:8000/v1/chat/completions", "openai:qwen2.5-vl-7b")
    answerer.close()


def test_a_transformers_answerer_loads_from_settings(tiny_vlm_dir: Path) -> None:
    settings = AnswererSettings(kind="transformers", model=str(tiny_vlm_dir), device="cpu", max_new_tokens=4)
    answerer, off = build_answerer_or_extractive(settings)
    assert off is None
    assert isinstance(answerer, TransformersVlmAnswerer) and isinstance(answerer, Answerer)
    assert answerer.max_new_tokens == 4


def test_a_missing_vlm_falls_back_to_extractive_and_says_why(hf_cache: Path) -> None:
    settings = AnswererSettings(kind="transformers", model="mmrag-test/not-downloaded", device="cpu")
    with pytest.raises(ModelUnavailableError):
        build_answerer(settings)
    answerer, off = build_answerer_or_extractive(settings)
    assert isinstance(answerer, ExtractiveAnswerer)
    assert off is not None and "mmrag-test/not-downloaded" in off and "extractive" in off


def test_importing_the_answerers_loads_no_model_library() -> None:
    code = (
        "import sys, mmrag.answer, mmrag.answer.extractive, mmrag.answer.openai_compat, mmrag.answer.vlm;"
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
