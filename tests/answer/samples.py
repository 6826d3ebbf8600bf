"""Test material for the answerers: receipt/invoice page texts, and tiny generative VLMs with chat templates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmrag.embedders.tiny import _seeded, build_tiny_colidefics3, build_tiny_colqwen2

RECEIPT = """STARBUCKS COFFEE
Store #1234 Seattle WA
Date: 2023-03-14 08:42
Caffe Latte Grande 4.95
Blueberry Muffin 3.25
Subtotal 8.20
Tax 0.82
Total 9.02
Paid VISA ****1234"""

INVOICE = """ACME Corporation
Invoice number: INV-2024-0117
Invoice date: 2024-01-17
Bill to: Jane Doe, 42 Elm Street
Consulting services 10 h x 120.00 = 1,200.00
VAT 20% 240.00
Amount due: 1,440.00 EUR
Payment due by 2024-02-16"""

HOTEL = """Grand Hotel Berlin
Guest: John Smith
Check-in 2023-05-02 Check-out 2023-05-05
3 nights x 89.00 EUR = 267.00 EUR
City tax 15.00 EUR
Total charged 282.00 EUR"""

PAGE_TEXTS = (RECEIPT, INVOICE, HOTEL)

# Minimal versions of the real checkpoints' templates: the same image placeholders, no system-prompt handling.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def build_tiny_qwen2_vl(seed: int = 0) -> tuple[Any, Any]:
    """Qwen2VLForConditionalGeneration on the tiny ColQwen2's config, tokenizer and image processor."""
    from transformers import Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    retrieval = build_tiny_colqwen2(seed)
    with _seeded(seed):
        model = Qwen2VLForConditionalGeneration(retrieval.model.config).eval()
    source = retrieval.processor
    processor = Qwen2VLProcessor(
        image_processor=source.image_processor,
        tokenizer=source.tokenizer,
        video_processor=source.video_processor,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    return model, processor


def build_tiny_idefics3(seed: int = 0) -> tuple[Any, Any]:
    """Idefics3ForConditionalGeneration (the SmolVLM architecture) on the tiny ColIdefics3's config and processor."""
    from transformers import Idefics3ForConditionalGeneration, Idefics3Processor

    retrieval = build_tiny_colidefics3(seed)
    with _seeded(seed):
        model = Idefics3ForConditionalGeneration(retrieval.model.config).eval()
    source = retrieval.processor
    processor = Idefics3Processor(
        image_processor=source.image_processor,
        tokenizer=source.tokenizer,
        image_seq_len=source.image_seq_len,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )
    return model, processor


TINY_VLM_BUILDERS = {"qwen2_vl": build_tiny_qwen2_vl, "idefics3": build_tiny_idefics3}


def save_tiny_vlm(family: str, directory: Path, seed: int = 0) -> Path:
    model, processor = TINY_VLM_BUILDERS[family](seed)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
