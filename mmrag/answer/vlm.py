"""TransformersVlmAnswerer and load_vlm: a vision-language model run in-process (Qwen2-VL/2.5-VL, Idefics3/SmolVLM).

The checkpoint's own config picks the classes (AutoModelForImageTextToText + AutoProcessor), and its own chat template
lays out the prompt, so no model name is ever parsed. Weights come from a local directory or the local Hugging Face
cache only. Generation is greedy; `stream()` runs it in a thread feeding a TextIteratorStreamer. One generation runs
at a time per model (a lock): a second concurrent request would only compete for the same GPU and memory.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

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
from mmrag.device import resolve_device, select_dtype
from mmrag.checkpoints import locate_checkpoint
from mmrag.errors import AnswererError, ModelUnavailableError
from mmrag.types import Answer, RetrievedPage

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

DEFAULT_GPU_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
DEFAULT_CPU_MODEL = "HuggingFaceTB/SmolVLM-256M-Instruct"  # ~0.5 GB in fp32: usable on a laptop CPU


def default_model_for(device: str) -> str:
    return DEFAULT_GPU_MODEL if device.startswith("cuda") else DEFAULT_CPU_MODEL


class TransformersVlmAnswerer:
    """An Answerer around a transformers image-text-to-text model and its processor."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        model_id: str,
        device: str = "auto",
        max_new_tokens: int = 512,
        max_image_side: int = 1024,
        image_token_budget: int = 1024,
        page_text_chars: int = 1500,
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.model_id = model_id
        self.name = f"transformers:{model_id}"
        self.max_new_tokens = max_new_tokens
        self.max_image_side = max_image_side
        self.image_token_budget = image_token_budget
        self.page_text_chars = page_text_chars
        self._lock = threading.Lock()

    def answer(self, question: str, pages: Sequence[RetrievedPage]) -> Answer:
        import torch

        if not pages:
            return not_answered(self.name)  # nothing to cite: no need to run the model
        inputs = self.prepare_inputs(question, pages)
        with self._lock, _generation_errors(self.model_id), torch.inference_mode():
            output = self.model.generate(**inputs, **self._generation_kwargs())
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        text = self.processor.tokenizer.decode(new_tokens, skip_special_tokens=True)
        log.debug("%s generated %d tokens: %r", self.name, len(new_tokens), text)
        return check_answer(text, question, pages, answerer=self.name)

    def stream(self, question: str, pages: Sequence[RetrievedPage]) -> Iterator[str | Answer]:
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        if not pages:
            yield from checked_stream([], question, pages, answerer=self.name)
            return
        inputs = self.prepare_inputs(question, pages)
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        abandoned = threading.Event()
        failures: list[BaseException] = []

        class StopWhenAbandoned(StoppingCriteria):
            # A client that stops reading (a closed connection) should not keep the model busy to max_new_tokens.
            def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> Any:
                import torch

                return torch.full((input_ids.shape[0],), abandoned.is_set(), dtype=torch.bool, device=input_ids.device)

        def generate() -> None:
            try:
                with self._lock:
                    self.model.generate(
                        **inputs,
                        **self._generation_kwargs(),
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([StopWhenAbandoned()]),
                    )
            except Exception as exc:  # noqa: BLE001 - any failure goes to the consuming thread, which re-raises it
                failures.append(exc)
                streamer.end()  # unblocks the consumer, which would otherwise wait for tokens forever

        thread = threading.Thread(target=generate, name=f"generate:{self.model_id}", daemon=True)
        thread.start()
        try:
            yield from checked_stream(self._deltas(streamer, failures), question, pages, answerer=self.name)
        finally:
            abandoned.set()
            thread.join()

    def describe(self, image: Image.Image) -> str:
        """Alt text for `image` (Describes): the image, then the caption prompt, through the model's chat template;
        greedy, at most CAPTION_MAX_TOKENS."""
        import torch

        fitted = fit_image(image, max_side=self.max_image_side, token_budget=self.image_token_budget)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CAPTION_PROMPT}]}]
        prompt = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = self.processor(
            text=[prompt], images=[[fitted]], return_tensors="pt", **_image_size_kwargs(self.processor, [fitted])
        ).to(self.device, dtype=self.model.dtype)
        kwargs = self._generation_kwargs() | {"max_new_tokens": min(self.max_new_tokens, CAPTION_MAX_TOKENS)}
        with self._lock, _generation_errors(self.model_id), torch.inference_mode():
            output = self.model.generate(**inputs, **kwargs)
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        caption = clean_caption(self.processor.tokenizer.decode(new_tokens, skip_special_tokens=True))
        if not caption:
            raise AnswererError(self.model_id, "the model wrote an empty caption")
        return caption

    def prepare_inputs(self, question: str, pages: Sequence[RetrievedPage]) -> Any:
        """The processor's model inputs (on the model's device) for the prompt with the pages' images."""
        images = [
            load_page_image(page, max_side=self.max_image_side, token_budget=self.image_token_budget) for page in pages
        ]
        parts = build_prompt(
            question, pages, has_image=[image is not None for image in images], page_text_chars=self.page_text_chars
        )
        content: list[dict[str, str]] = []
        page_images: list[Image.Image] = []
        for part in parts:
            if isinstance(part, PromptText):
                content.append({"type": "text", "text": part.text})
            elif isinstance(part, PromptImage):
                image = images[part.page_index]
                assert image is not None  # build_prompt places images only where has_image is True
                content.append({"type": "image"})
                page_images.append(image)
        messages = [{"role": "user", "content": content}]
        prompt = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = self.processor(
            text=[prompt],
            images=[page_images] if page_images else None,
            return_tensors="pt",
            **_image_size_kwargs(self.processor, page_images),
        )
        # Only floating tensors take the model's dtype (pixel values); token ids stay integers.
        return inputs.to(self.device, dtype=self.model.dtype)

    def _generation_kwargs(self) -> dict[str, Any]:
        # Greedy: an answer should be reproducible and stay on the pages. The tokenizer's pad id silences the
        # "Setting pad_token_id to eos_token_id" warning of checkpoints whose generation config lacks one.
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": False,
            "pad_token_id": self.processor.tokenizer.pad_token_id,
        }

    def _deltas(self, streamer: Any, failures: list[BaseException]) -> Iterator[str]:
        for text in streamer:
            if text:
                yield text
        if failures:
            failure = failures[0]
            raise AnswererError(self.model_id, f"generation failed: {type(failure).__name__}: {failure}") from failure


@contextmanager
def _generation_errors(model_id: str) -> Iterator[None]:
    """A CUDA out-of-memory during generation becomes an AnswererError naming the model."""
    import torch

    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        raise AnswererError(model_id, f"out of GPU memory while generating ({exc})") from exc


def load_vlm(
    model: str | None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    max_new_tokens: int = 512,
    max_image_side: int = 1024,
    image_token_budget: int = 1024,
    page_text_chars: int = 1500,
) -> TransformersVlmAnswerer:
    """Load an image-text-to-text checkpoint from a local directory or the local HF cache; never downloads.

    `model` None picks DEFAULT_GPU_MODEL on CUDA and DEFAULT_CPU_MODEL on CPU. Raises ModelUnavailableError naming
    the model (and how to provide it) when it is not on disk, is not a vision-language model, lacks weights, or has
    no chat template.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = resolve_device(device)
    model = model or default_model_for(device)
    checkpoint = locate_checkpoint(model)
    torch_dtype = select_dtype(dtype, device)
    log.info("loading answerer %s (%s on %s, revision %s)", model, torch_dtype, device, checkpoint.revision)
    try:
        # The default attention (sdpa) is kept on CPU too, unlike the ColPali embedder: its NaNs come from fully
        # padded rows, and an answer is one unpadded sequence.
        loaded, loading_info = AutoModelForImageTextToText.from_pretrained(
            str(checkpoint.path),
            dtype=torch_dtype,
            device_map=device,
            local_files_only=True,
            output_loading_info=True,
        )
        processor = AutoProcessor.from_pretrained(str(checkpoint.path), local_files_only=True)
    except Exception as error:  # transformers raises OSError, ValueError, KeyError, safetensors errors... for this
        raise ModelUnavailableError(model, f"it is not a loadable image-text-to-text model ({type(error).__name__}: "
                                           f"{error})") from error  # fmt: skip
    # transformers random-initialises weights missing from a checkpoint and only logs it; refuse instead.
    missing = sorted(loading_info.get("missing_keys", ()))
    if missing:
        reason = f"the checkpoint lacks weights for {len(missing)} parameters ({', '.join(missing[:5])})"
        raise ModelUnavailableError(model, reason)
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise ModelUnavailableError(model, f"its processor ({type(processor).__name__}) does not take images")
    if not getattr(processor, "chat_template", None):
        raise ModelUnavailableError(model, "its processor has no chat template (use the -Instruct checkpoint)")
    return TransformersVlmAnswerer(
        loaded,
        processor,
        model_id=model,
        device=device,
        max_new_tokens=max_new_tokens,
        max_image_side=max_image_side,
        image_token_budget=image_token_budget,
        page_text_chars=page_text_chars,
    )


def _image_size_kwargs(processor: Any, images: Sequence[Image.Image]) -> dict[str, Any]:
    """Processor size options that keep it from upscaling pages past the image budget.

    Idefics3 (SmolVLM) resizes every image so its longest edge is the processor's `size` (2048 px for SmolVLM) and
    cuts it into tiles of `max_image_size`, so a page fitted to the budget would be blown up again into 16 tiles.
    Capping `size` at the fitted pages' longest side, rounded up to whole tiles, keeps the tiles to the budget.
    Qwen2-VL needs nothing: it keeps an image's size within its pixel range, and fitted pages are within it.
    """
    image_processor = getattr(processor, "image_processor", None)
    size = getattr(image_processor, "size", None)
    tile = getattr(image_processor, "max_image_size", None)
    if not images or not isinstance(size, dict) or not isinstance(tile, dict):
        return {}
    if "longest_edge" not in size or "longest_edge" not in tile:
        return {}
    tile_side = int(tile["longest_edge"])
    longest = max(max(image.size) for image in images)
    capped = min(int(size["longest_edge"]), max(tile_side, math.ceil(longest / tile_side) * tile_side))
    return {"size": {"longest_edge": capped}}
