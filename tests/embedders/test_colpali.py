"""ColPaliEmbedder and load_colpali on tiny random-init ColQwen2 / ColIdefics3 models, loaded through the real path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmrag.device import select_dtype
from mmrag.embedders.colpali import FAMILIES, ColPaliEmbedder, family_for_config, load_colpali
from mmrag.embedders.tiny import build_tiny_colpali_embedder, build_tiny_colqwen2
from mmrag.errors import ConfigError, ModelUnavailableError
from mmrag.protocols import MultiVectorEmbedder

from .samples import make_page

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


def _assert_vectors_close(got: list[np.ndarray], expected: list[np.ndarray], atol: float) -> None:
    assert [vectors.shape for vectors in got] == [vectors.shape for vectors in expected]
    for got_vectors, expected_vectors in zip(got, expected, strict=True):
        np.testing.assert_allclose(got_vectors, expected_vectors, atol=atol)


def test_satisfies_the_protocol(tiny_multivector: ColPaliEmbedder) -> None:
    assert isinstance(tiny_multivector, MultiVectorEmbedder)
    assert tiny_multivector.dim == 128
    assert tiny_multivector.revision == "random-init"
    assert tiny_multivector.model_id.startswith("tiny-random:")


def test_one_unit_vector_per_real_token(
    tiny_multivector: ColPaliEmbedder, pages: list[Image.Image], queries: list[str]
) -> None:
    processor = tiny_multivector.processor
    for vectors, inputs in (
        (tiny_multivector.embed_images(pages), [processor.process_images([page]) for page in pages]),
        (tiny_multivector.embed_queries(queries), [processor.process_queries([query]) for query in queries]),
    ):
        # Each item alone has no padding, so its attention mask counts exactly its real tokens.
        assert [len(item) for item in vectors] == [int(single["attention_mask"].sum()) for single in inputs]
        for item in vectors:
            assert item.dtype == np.float32 and item.shape[1] == tiny_multivector.dim
            np.testing.assert_allclose(np.linalg.norm(item, axis=1), 1.0, atol=1e-5)


def test_cpu_runs_eager_attention(tiny_multivector: ColPaliEmbedder) -> None:
    # The models are built with transformers' default (sdpa); the embedder must switch them on CPU.
    assert tiny_multivector.attn_implementation == "eager"


def test_padded_batch_is_finite_and_equals_each_item_alone(
    tiny_multivector: ColPaliEmbedder, pages: list[Image.Image], queries: list[str]
) -> None:
    """The sdpa-on-CPU NaN bug shows on padded positions; batch results must match unpadded single runs."""
    batched_queries = tiny_multivector.embed_queries(queries)
    assert all(np.isfinite(item).all() for item in batched_queries)
    _assert_vectors_close(batched_queries, [tiny_multivector.embed_queries([q])[0] for q in queries], atol=1e-4)
    batched_pages = tiny_multivector.embed_images(pages)
    assert all(np.isfinite(item).all() for item in batched_pages)
    _assert_vectors_close(batched_pages, [tiny_multivector.embed_images([p])[0] for p in pages], atol=1e-4)


def test_raw_model_output_has_no_nan_on_padding(tiny_multivector: ColPaliEmbedder, queries: list[str]) -> None:
    inputs = tiny_multivector.processor.process_queries(queries)
    assert (inputs["attention_mask"] == 0).any(), "the queries must differ in length to need padding"
    with torch.inference_mode():
        raw = tiny_multivector.model(**inputs)
    assert torch.isfinite(raw).all()


def test_empty_input_gives_an_empty_list(tiny_multivector: ColPaliEmbedder) -> None:
    assert tiny_multivector.embed_images([]) == []
    assert tiny_multivector.embed_queries([]) == []


def test_same_seed_same_vectors(tiny_colqwen2: ColPaliEmbedder, pages: list[Image.Image]) -> None:
    rebuilt = build_tiny_colpali_embedder(device="cpu")
    _assert_vectors_close(rebuilt.embed_images(pages), tiny_colqwen2.embed_images(pages), atol=0)
    other = build_tiny_colpali_embedder(device="cpu", seed=1).embed_images(pages[:1])[0]
    assert np.abs(other - tiny_colqwen2.embed_images(pages[:1])[0]).max() > 1e-2


def test_oom_backoff_inside_the_embedder(queries: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    embedder = build_tiny_colpali_embedder(device="cpu", batch_size=4)
    expected = embedder.embed_queries(queries)
    encode_batch = embedder._encode_batch

    def oom_above_one(inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
        if inputs["input_ids"].shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return encode_batch(inputs)

    monkeypatch.setattr(embedder, "_encode_batch", oom_above_one)
    _assert_vectors_close(embedder.embed_queries(queries), expected, atol=1e-4)
    assert embedder.batch_size == 1  # the next call starts at the size that fitted


def test_family_comes_from_config_not_from_the_directory_name(
    saved_colqwen2: Path, tiny_colqwen2: ColPaliEmbedder, pages: list[Image.Image], queries: list[str]
) -> None:
    assert "paligemma" in saved_colqwen2.name
    loaded = load_colpali(str(saved_colqwen2), device="cpu", batch_size=2)
    assert loaded.family == "ColQwen2"
    assert type(loaded.processor).__name__ == "ColQwen2Processor"
    assert (loaded.model_id, loaded.revision) == (f"colpali:local-dir:{saved_colqwen2.resolve()}", "local")
    assert (loaded.attn_implementation, loaded.model.dtype, loaded.batch_size) == ("eager", torch.float32, 2)
    _assert_vectors_close(loaded.embed_images(pages), tiny_colqwen2.embed_images(pages), atol=1e-5)
    _assert_vectors_close(loaded.embed_queries(queries), tiny_colqwen2.embed_queries(queries), atol=1e-5)


def test_hub_id_loads_from_the_local_cache(saved_colqwen2: Path, hf_cache: Path, queries: list[str]) -> None:
    repo = hf_cache / "models--mmrag-test--tiny-colqwen2"
    shutil.copytree(saved_colqwen2, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    loaded = load_colpali("mmrag-test/tiny-colqwen2", device="cpu")
    assert (loaded.model_id, loaded.revision, loaded.family) == ("colpali:mmrag-test/tiny-colqwen2", COMMIT, "ColQwen2")
    assert len(loaded.embed_queries(queries)) == len(queries)


# peft's get_peft_model calls a transformers method deprecated in transformers 5; not our code.
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_peft_adapter_takes_its_family_from_the_base_config(
    saved_colqwen2: Path, tmp_path: Path, queries: list[str]
) -> None:
    from colpali_engine.models import ColQwen2
    from peft import LoraConfig, get_peft_model

    base = ColQwen2.from_pretrained(str(saved_colqwen2), attn_implementation="eager", local_files_only=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        # init_lora_weights=False: random LoRA weights, so an adapter that failed to apply would show.
        targets = ["q_proj", "v_proj", "custom_text_proj"]
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
        adapted = get_peft_model(base, lora).eval()
    adapter_dir = tmp_path / "colSmol-256M"  # a name that claims another family again
    adapted.save_pretrained(adapter_dir)
    _, processor = build_tiny_colqwen2()
    processor.save_pretrained(adapter_dir)
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(saved_colqwen2)
    assert not (adapter_dir / "config.json").exists()

    loaded = load_colpali(str(adapter_dir), device="cpu")
    assert (loaded.family, loaded.revision) == ("ColQwen2", "local+base:local")
    inputs = processor.process_queries(queries)
    with torch.inference_mode():
        expected = adapted(**inputs)
        with adapted.disable_adapter():
            assert (adapted(**inputs) - expected).abs().max() > 1e-2, "the adapter must change the vectors"
    expected_items = [item[mask.bool()].numpy() for item, mask in zip(expected, inputs["attention_mask"], strict=True)]
    _assert_vectors_close(loaded.embed_queries(queries), expected_items, atol=1e-4)


def test_adapter_with_a_missing_base_is_refused(tmp_path: Path, hf_cache: Path) -> None:
    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    (adapter_dir / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "vidore/colqwen2-base"}))
    with pytest.raises(ModelUnavailableError, match="base model is unavailable") as caught:
        load_colpali(str(adapter_dir))
    assert str(adapter_dir) in str(caught.value) and "vidore/colqwen2-base" in str(caught.value)


def test_checkpoint_without_the_retrieval_head_is_refused(tmp_path: Path) -> None:
    """A plain Qwen2-VL checkpoint has no custom_text_proj; loading it would random-initialise the head."""
    from transformers import Qwen2VLModel

    model, processor = build_tiny_colqwen2()
    raw_dir = tmp_path / "raw-qwen2-vl"
    Qwen2VLModel(model.config).save_pretrained(raw_dir)
    processor.save_pretrained(raw_dir)
    with pytest.raises(ModelUnavailableError, match="lacks weights for 2 ColQwen2 parameters"):
        load_colpali(str(raw_dir))


def test_hub_id_missing_from_the_cache_names_the_model(hf_cache: Path) -> None:
    with pytest.raises(ModelUnavailableError) as caught:
        load_colpali("vidore/colqwen2-v1.0")
    assert caught.value.model == "vidore/colqwen2-v1.0"
    assert "'vidore/colqwen2-v1.0'" in str(caught.value)


def test_missing_local_directory_names_the_model(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ModelUnavailableError, match="does not exist") as caught:
        load_colpali(missing)
    assert missing in str(caught.value)


def test_directory_without_a_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="neither config.json nor adapter_config.json"):
        load_colpali(str(tmp_path))


@pytest.mark.parametrize(
    ("model_type", "model_class", "processor_class"),
    [
        ("paligemma", "ColPali", "ColPaliProcessor"),
        ("qwen2_vl", "ColQwen2", "ColQwen2Processor"),
        ("qwen2_5_vl", "ColQwen2_5", "ColQwen2_5_Processor"),
        ("idefics3", "ColIdefics3", "ColIdefics3Processor"),
    ],
)
def test_model_type_picks_the_family(model_type: str, model_class: str, processor_class: str) -> None:
    import colpali_engine.models

    # The name says ColPali; the config decides.
    family = family_for_config("vidore/colpali-v1.2", {"model_type": model_type, "architectures": [model_class]})
    assert (family.model_class, family.processor_class) == (model_class, processor_class)
    assert hasattr(colpali_engine.models, model_class) and hasattr(colpali_engine.models, processor_class)


def test_every_family_in_the_table_exists_in_colpali_engine() -> None:
    import colpali_engine.models

    for family in FAMILIES.values():
        assert hasattr(colpali_engine.models, family.model_class)
        assert hasattr(colpali_engine.models, family.processor_class)


@pytest.mark.parametrize(
    ("model_type", "reason"), [("llama", "not a supported ColPali family"), ("colqwen2", "native retrieval format")]
)
def test_unsupported_model_types_are_refused(model_type: str, reason: str) -> None:
    with pytest.raises(ModelUnavailableError, match=reason):
        family_for_config("some/model", {"model_type": model_type})


def test_dtype_selection() -> None:
    assert select_dtype("auto", "cpu") == torch.float32
    assert select_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ConfigError, match="int8"):
        select_dtype("int8", "cpu")


def test_pages_of_equal_size_give_equal_token_counts(tiny_colqwen2: ColPaliEmbedder) -> None:
    counts = {len(vectors) for vectors in tiny_colqwen2.embed_images([make_page(seed) for seed in range(3)])}
    assert len(counts) == 1
