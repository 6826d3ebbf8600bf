"""TransformersVlmAnswerer end to end on tiny random-init Qwen2-VL and Idefics3 checkpoints, loaded by load_vlm.

Random weights make random text, so most answers are honestly unsupported; a generation-config bias makes one
model write a citation, to show a model's own output going through the citation check.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from mmrag.answer.prompt import NOT_ANSWERED
from mmrag.answer.vlm import TransformersVlmAnswerer, default_model_for, load_vlm
from mmrag.errors import ModelUnavailableError
from mmrag.protocols import Answerer
from mmrag.types import Answer, RetrievedPage

QUESTION = "What was the total at Starbucks?"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _load(directory: Path | str, **overrides: Any) -> TransformersVlmAnswerer:
    options: dict[str, Any] = {"device": "cpu", "max_new_tokens": 8, "max_image_side": 112, "page_text_chars": 120}
    return load_vlm(str(directory), **(options | overrides))


def _record_generate(answerer: TransformersVlmAnswerer) -> list[dict[str, Any]]:
    """Record the inputs and outputs of every generate() call the answerer makes (the real generate still runs)."""
    calls: list[dict[str, Any]] = []
    generate = answerer.model.generate

    def recording_generate(**kwargs: Any) -> Any:
        output = generate(**kwargs)
        calls.append({**kwargs, "output": output})
        return output

    answerer.model.generate = recording_generate
    return calls


def _write_citations(answerer: TransformersVlmAnswerer) -> None:
    """Bias greedy decoding of the random model so that it writes "[1] [1] [1] ..."."""
    token = answerer.processor.tokenizer.convert_tokens_to_ids
    # A space, not "]", ends each group: TextIteratorStreamer hands text on at word boundaries.
    open_, one, close, space = token("["), token("1"), token("]"), token("Ġ")
    answerer.model.generation_config.sequence_bias = {
        (open_,): 50.0, (open_, one): 100.0, (one, close): 200.0, (close, space): 300.0,
    }  # fmt: skip


def _assert_well_formed(answer: Answer, pages: list[RetrievedPage], name: str) -> None:
    assert answer.answerer == name
    assert {c.page_id for c in answer.citations} <= {page.page_id for page in pages}
    if answer.supported:
        assert answer.citations
    else:
        assert (answer.text, answer.citations) == (NOT_ANSWERED, [])


def test_answer_runs_the_loaded_checkpoint_with_the_page_images(tiny_vlm_dir: Path, pages: list[RetrievedPage]) -> None:
    answerer = _load(tiny_vlm_dir)
    assert isinstance(answerer, Answerer)
    assert answerer.name == f"transformers:{tiny_vlm_dir}"
    calls = _record_generate(answerer)

    answer = answerer.answer(QUESTION, pages)

    _assert_well_formed(answer, pages, answerer.name)
    (call,) = calls
    assert (call["max_new_tokens"], call["do_sample"]) == (8, False)
    config = answerer.model.config
    input_ids = call["input_ids"][0]
    assert int((input_ids == config.image_token_id).sum()) > 0  # the chat template placed the images...
    assert call["pixel_values"].numel() > 0  # ...and the processor turned the pages into pixels
    if config.model_type == "qwen2_vl":
        assert call["image_grid_thw"].shape[0] == len(pages)
    else:
        assert call["pixel_values"].shape[1] >= len(pages)  # Idefics3: tiles and a global view per page
    prompt = answerer.processor.tokenizer.decode(input_ids)
    for number, page in enumerate(pages, start=1):
        assert f"Page [{number}]: {page.path}, page {page.page_number}" in prompt
    assert f"Question: {QUESTION}" in prompt and "STARBUCKS COFFEE" in prompt
    assert call["output"].shape[1] <= input_ids.shape[0] + 8
    assert answerer.answer(QUESTION, pages) == answer  # greedy: the same pages give the same answer


def test_stream_yields_chunks_then_the_same_answer(tiny_vlm_dir: Path, pages: list[RetrievedPage]) -> None:
    answerer = _load(tiny_vlm_dir)
    *chunks, final = list(answerer.stream(QUESTION, pages))
    assert isinstance(final, Answer) and all(isinstance(chunk, str) for chunk in chunks)
    assert final == answerer.answer(QUESTION, pages)
    assert "".join(chunks) == final.text  # type: ignore[arg-type]


def test_a_citation_the_model_writes_is_checked_against_the_pages(
    tiny_vlm_dir: Path, pages: list[RetrievedPage]
) -> None:
    answerer = _load(tiny_vlm_dir, max_new_tokens=8)
    _write_citations(answerer)
    answer = answerer.answer(QUESTION, pages)
    assert (answer.text, answer.supported) == ("[1]", True)  # "[1] [1] ": one page, cited once
    assert [(c.page_id, c.quote) for c in answer.citations] == [(pages[0].page_id, "STARBUCKS COFFEE")]
    *chunks, streamed = list(answerer.stream(QUESTION, pages))
    assert (chunks, streamed) == (["[1]"], answer)


def test_a_stream_the_reader_abandons_stops_generating(tiny_vlm_dir: Path, pages: list[RetrievedPage]) -> None:
    # Left alone, the tiny model writes 2000 tokens in several seconds; the reader stops after the first chunk.
    answerer = _load(tiny_vlm_dir, max_new_tokens=2000)
    _write_citations(answerer)
    calls = _record_generate(answerer)
    stream = answerer.stream(QUESTION, pages[:1])
    assert next(stream) == "[1]"
    started = time.monotonic()
    stream.close()  # what a web server does when the client disconnects
    assert time.monotonic() - started < 3
    (call,) = calls
    assert call["output"].shape[1] - call["input_ids"].shape[1] < 100
    assert not answerer._lock.locked()


def test_a_page_without_a_stored_image_still_reaches_the_model_as_text(tiny_vlm_dir: Path) -> None:
    answerer = _load(tiny_vlm_dir)
    calls = _record_generate(answerer)
    text_only = RetrievedPage(1, 1, 1, "notes.txt.pdf", 0.5, "Budget 5,000 EUR", None)
    answer = answerer.answer("What is the budget?", [text_only])
    _assert_well_formed(answer, [text_only], answerer.name)
    assert "pixel_values" not in calls[0]
    assert "Budget 5,000 EUR" in answerer.processor.tokenizer.decode(calls[0]["input_ids"][0])


def test_a_hub_id_loads_from_the_local_cache(tiny_vlm_dir: Path, hf_cache: Path) -> None:
    repo = hf_cache / "models--mmrag-test--tiny-vlm"
    shutil.copytree(tiny_vlm_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    assert load_vlm("mmrag-test/tiny-vlm", device="cpu").name == "transformers:mmrag-test/tiny-vlm"


@pytest.mark.parametrize("model", ["mmrag-test/not-downloaded", "/nonexistent/vlm-dir"])
def test_a_missing_model_names_itself_and_how_to_provide_it(hf_cache: Path, model: str) -> None:
    with pytest.raises(ModelUnavailableError) as raised:
        load_vlm(model, device="cpu")
    assert model in str(raised.value) and "huggingface-cli download" in str(raised.value)


def test_a_checkpoint_without_a_chat_template_is_refused(tiny_vlm_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_vlm_dir, tmp_path / "no-template")
    (copy / "chat_template.jinja").unlink()
    with pytest.raises(ModelUnavailableError, match="no chat template"):
        load_vlm(str(copy), device="cpu")


def test_a_text_only_checkpoint_is_refused(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "text-only")
    with pytest.raises(ModelUnavailableError, match="not a loadable image-text-to-text model"):
        load_vlm(str(tmp_path / "text-only"), device="cpu")


def test_the_default_model_follows_the_device() -> None:
    assert default_model_for("cuda:0") == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert default_model_for("cpu") == "HuggingFaceTB/SmolVLM-256M-Instruct"


def test_the_image_budget_caps_idefics3_tiles() -> None:
    """SmolVLM's processor blows every image up to 2048 px and tiles it; the budget must hold it back."""
    from mmrag.answer.vlm import _image_size_kwargs

    from .samples import build_tiny_idefics3

    _, processor = build_tiny_idefics3()
    processor.image_processor.size = {"longest_edge": 2048}  # SmolVLM's real sizes
    processor.image_processor.max_image_size = {"longest_edge": 512}
    page = Image.new("RGB", (500, 700))  # already fitted to the budget

    size_kwargs = _image_size_kwargs(processor, [page])
    assert size_kwargs == {"size": {"longest_edge": 1024}}
    assert _image_size_kwargs(processor, [Image.new("RGB", (3000, 100))]) == {"size": {"longest_edge": 2048}}
    assert _image_size_kwargs(processor, []) == {}

    def tiles(**kwargs: Any) -> int:
        return processor(text=["<image>"], images=[[page]], return_tensors="pt", **kwargs)["pixel_values"].shape[1]

    assert (tiles(), tiles(**size_kwargs)) == (3 * 4 + 1, 2 * 2 + 1)  # tiles plus one global view


def test_no_retrieved_pages_runs_no_model(tiny_vlm_dir: Path) -> None:
    answerer = _load(tiny_vlm_dir)
    calls = _record_generate(answerer)
    assert answerer.answer(QUESTION, []) == Answer(NOT_ANSWERED, [], False, answerer.name)
    assert list(answerer.stream(QUESTION, [])) == [NOT_ANSWERED, Answer(NOT_ANSWERED, [], False, answerer.name)]
    assert calls == []


def test_half_precision_weights_get_half_precision_pixels(tiny_vlm_dir: Path, pages: list[RetrievedPage]) -> None:
    """What a GPU load does (bf16 weights), on CPU: pixel values take the weights' dtype, token ids stay integers."""
    answerer = _load(tiny_vlm_dir, dtype="bfloat16")
    inputs = answerer.prepare_inputs(QUESTION, pages)
    assert inputs["pixel_values"].dtype == torch.bfloat16 and inputs["input_ids"].dtype == torch.int64
    _assert_well_formed(answerer.answer(QUESTION, pages), pages, answerer.name)
