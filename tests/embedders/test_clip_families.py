"""open_clip's current families through the real loader: SigLIP 2, PE-Core, MetaCLIP 2 worldwide.

Each runs as a tiny random-init `local-dir:` checkpoint made from its real open_clip config (tiny_clip_families.py):
it loads with `load_clip`, uses its own text tokenizer, and gives open_clip's own vectors. Also the refusals these
families need: a Hugging Face tokenizer that is not on this machine, and MetaCLIP 2 weights in a GELU architecture.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmrag.embedders.clip import TOKENIZER_FILES, OpenClipEmbedder, load_clip
from mmrag.errors import ModelUnavailableError

from .tiny_clip_families import FAMILIES, TINY_SIZE, save_tiny_family

TOLERANCE = 1e-3
COMMIT = "0123456789abcdef0123456789abcdef01234567"

# (model class, image tower, tokenizer class open_clip's get_tokenizer gives, the transformers class inside it)
EXPECTED = {
    "siglip2": ("CustomTextCLIP", "TimmModel", "HFTokenizer", "GemmaTokenizer"),
    "pe-core": ("CustomTextCLIP", "TimmModel", "SimpleTokenizer", None),
    "metaclip2": ("CLIP", "VisionTransformer", "HFTokenizer", "XLMRobertaTokenizer"),
}
# SigLIP 2 and PE-Core squash the image to the model's square; MetaCLIP 2 (224 px) resizes and centre-crops
TAKES_WORKER_PIXELS = {"siglip2": False, "pe-core": False, "metaclip2": True}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {name: save_tiny_family(spec, root / name) for name, spec in FAMILIES.items()}


@pytest.fixture(scope="module")
def loaded(checkpoints: dict[str, Path]) -> dict[str, OpenClipEmbedder]:
    return {name: load_clip(f"local-dir:{path}", device="cpu", batch_size=3) for name, path in checkpoints.items()}


def open_clips_own(directory: Path, pages: list[Image.Image], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The reference: open_clip's factory, preprocess, tokenizer and encoders, nothing of ours."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{directory}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{directory}")
    model.eval()
    with torch.no_grad():
        images = model.encode_image(torch.stack([preprocess(page) for page in pages]), normalize=True).numpy()
        vectors = model.encode_text(tokenizer(texts), normalize=True).numpy()
    return images, vectors


def test_family_loads_through_the_spec_path_with_its_own_towers(
    family: str, checkpoints: dict[str, Path], loaded: dict[str, OpenClipEmbedder]
) -> None:
    embedder = loaded[family]
    model_class, image_tower, tokenizer_class, hf_class = EXPECTED[family]
    assert (type(embedder.model).__name__, type(embedder.model.visual).__name__) == (model_class, image_tower)
    assert type(embedder.tokenizer).__name__ == tokenizer_class
    inner = getattr(embedder.tokenizer, "tokenizer", None)  # an HFTokenizer's transformers tokenizer
    assert (type(inner).__name__ if inner is not None else None) == hf_class
    assert (embedder.model_id, embedder.revision) == (f"open_clip:local-dir:{checkpoints[family].resolve()}", "local")
    assert embedder.dim == TINY_SIZE


def test_family_embeds_images_and_texts(
    family: str, loaded: dict[str, OpenClipEmbedder], pages: list[Image.Image], queries: list[str]
) -> None:
    embedder = loaded[family]
    for vectors, count in ((embedder.embed_images(pages), len(pages)), (embedder.embed_texts(queries), len(queries))):
        assert vectors.shape == (count, embedder.dim) and vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        assert np.abs(vectors[0] - vectors[1]).max() > 1e-3  # different inputs, different vectors


def test_the_tokenizer_is_the_text_towers_own(family: str, loaded: dict[str, OpenClipEmbedder]) -> None:
    import open_clip

    tokenizer = loaded[family].tokenizer
    tokens = tokenizer(["invoice total", "Zürich?"])
    context_length = open_clip.get_model_config(FAMILIES[family].architecture)["text_cfg"]["context_length"]
    assert tokens.shape == (2, context_length)
    if family == "siglip2":
        # Gemma, as open_clip's SigLipTokenizer sets it up: no BOS, EOS (1) after the text, then padding (0) right
        hf = tokenizer.tokenizer
        assert (hf.eos_token_id, hf.pad_token_id, hf.padding_side) == (1, 0, "right")
        ids = hf("invoice total")["input_ids"]
        assert ids[-1] == 1 and hf.bos_token_id not in ids
        assert tokens[0].tolist() == ids + [0] * (context_length - len(ids))
        assert int(tokens.max()) < len(hf)  # within the tiny vocabulary, not CLIP's 49408
    elif family == "metaclip2":
        # XLM-V's: <s> 0, text, </s> 2 (the text tower pools at eos_id 2), <pad> 1
        ids = tokenizer.tokenizer("invoice total")["input_ids"]
        assert ids[0] == 0 and ids[-1] == 2
        assert tokens[0].tolist() == ids + [1] * (context_length - len(ids))
        assert loaded[family].model.text_pool_type == "eos"
    else:
        # PE-Core's own is open_clip's CLIP BPE tokenizer at PE's context length of 32
        assert (int(tokens[0, 0]), context_length) == (49406, 32)
        assert tokens[0].tolist() == open_clip.SimpleTokenizer(context_length=32)(["invoice total"])[0].tolist()


def test_vectors_equal_open_clips_own(
    family: str,
    checkpoints: dict[str, Path],
    loaded: dict[str, OpenClipEmbedder],
    pages: list[Image.Image],
    queries: list[str],
) -> None:
    images, texts = open_clips_own(checkpoints[family], pages, queries)
    assert np.abs(loaded[family].embed_images(pages) - images).max() <= TOLERANCE
    assert np.abs(loaded[family].embed_texts(queries) - texts).max() <= TOLERANCE


def test_worker_pixels_only_where_the_preprocess_is_resize_and_crop(
    family: str, checkpoints: dict[str, Path], loaded: dict[str, OpenClipEmbedder], pages: list[Image.Image]
) -> None:
    embedder = loaded[family]
    spec = embedder.input_spec()
    if not TAKES_WORKER_PIXELS[family]:
        # squash: the whole image to the square, no crop, which ClipPixels (shortest side + centre crop) is not
        assert spec is None
        with pytest.raises(ValueError, match="not resize"):
            embedder.embed_inputs([np.zeros((3, TINY_SIZE, TINY_SIZE), dtype=np.uint8)])
        return
    assert spec is not None and spec.size == TINY_SIZE
    images, _ = open_clips_own(checkpoints[family], pages, ["x"])
    # the workers' uint8 resampling is within 1 of PIL's per pixel (tests/embedders/test_inputs.py)
    assert np.abs(embedder.embed_inputs([spec.from_image(page) for page in pages]) - images).max() <= TOLERANCE


def test_squash_families_keep_the_whole_image(
    loaded: dict[str, OpenClipEmbedder], checkpoints: dict[str, Path]
) -> None:
    """A wide image whose right edge differs: squashed, the edge reaches the model; centre-cropped, it would not."""
    left = Image.new("RGB", (96, 32), (40, 60, 200))
    right = left.copy()
    right.paste((220, 180, 20), (84, 0, 96, 32))
    for name in ("siglip2", "pe-core"):
        vectors = loaded[name].embed_images([left, right])
        assert np.abs(vectors[0] - vectors[1]).max() > 1e-3, name
    vectors = loaded["metaclip2"].embed_images([left, right])
    assert np.abs(vectors[0] - vectors[1]).max() < 1e-6


def test_a_local_dir_without_its_hf_tokenizer_is_refused_by_name(tmp_path: Path) -> None:
    directory = save_tiny_family(FAMILIES["siglip2"], tmp_path / "siglip2", with_tokenizer=False)
    with pytest.raises(ModelUnavailableError, match="no tokenizer.json or tokenizer_config.json") as caught:
        load_clip(f"local-dir:{directory}")
    assert "'timm/ViT-B-16-SigLIP2'" in str(caught.value)  # the tokenizer to save there


def _cache_repo(hf_cache: Path, repo_id: str, source: Path, files: list[str]) -> None:
    repo = hf_cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    for file in files:
        shutil.copy(source / file, repo / "snapshots" / COMMIT / file)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


def _hub_checkpoint(hf_cache: Path, tmp_path: Path, tokenizer_repo: str) -> str:
    """A tiny MetaCLIP 2 in the cache as a hub repo whose config names `tokenizer_repo` as its tokenizer."""
    import json

    source = save_tiny_family(FAMILIES["metaclip2"], tmp_path / "metaclip2")
    config = json.loads((source / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = tokenizer_repo
    (source / "open_clip_config.json").write_text(json.dumps(config))
    _cache_repo(hf_cache, "mmrag-test/tiny-metaclip2", source, ["open_clip_config.json", "open_clip_model.safetensors"])
    return "hf-hub:mmrag-test/tiny-metaclip2"


def test_a_hub_tokenizer_in_the_cache_is_used(hf_cache: Path, tmp_path: Path, queries: list[str]) -> None:
    spec = _hub_checkpoint(hf_cache, tmp_path, "mmrag-test/tiny-xlm-v")
    tokenizer_files = tmp_path / "metaclip2"
    (tokenizer_files / "config.json").write_text('{"model_type": "xlm-roberta"}')  # AutoTokenizer reads it first
    _cache_repo(hf_cache, "mmrag-test/tiny-xlm-v", tokenizer_files, ["config.json", *TOKENIZER_FILES])
    embedder = load_clip(spec, device="cpu")
    assert type(embedder.tokenizer.tokenizer).__name__ == "XLMRobertaTokenizer"
    assert embedder.revision == COMMIT
    assert embedder.embed_texts(queries).shape == (len(queries), TINY_SIZE)


@pytest.mark.parametrize("cached", [[], list(TOKENIZER_FILES)], ids=["nothing", "no-config.json"])
def test_a_hub_tokenizer_missing_from_the_cache_is_refused_without_going_online(
    hf_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cached: list[str]
) -> None:
    from huggingface_hub import constants

    spec = _hub_checkpoint(hf_cache, tmp_path, "mmrag-test/uncached-tokenizer")
    if cached:
        _cache_repo(hf_cache, "mmrag-test/uncached-tokenizer", tmp_path / "metaclip2", cached)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # even so, loading answers from the cache only
    lookups: list[object] = []
    real_getaddrinfo = socket.getaddrinfo

    def record_lookup(host: object, *args: object, **kwargs: object) -> object:
        lookups.append(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", record_lookup)
    with pytest.raises(ModelUnavailableError, match="'mmrag-test/uncached-tokenizer' is not in the Hugging Face cache"):
        load_clip(spec)
    assert lookups == []


def test_metaclip2_weights_in_a_gelu_architecture_are_refused_with_the_right_name() -> None:
    # the tag was trained with QuickGELU; open_clip would only warn and build GELU, giving wrong vectors
    with pytest.raises(ModelUnavailableError, match="use 'ViT-H-14-worldwide-quickgelu:metaclip2_worldwide'"):
        load_clip("ViT-H-14-worldwide:metaclip2_worldwide")


@pytest.mark.usefixtures("hf_cache")
@pytest.mark.parametrize(
    "spec",
    ["ViT-H-14-worldwide-quickgelu:metaclip2_worldwide", "ViT-B-16-SigLIP2:webli", "PE-Core-B-16:meta"],
)
def test_the_documented_specs_pass_the_checks_and_fail_only_for_missing_weights(spec: str) -> None:
    with pytest.raises(ModelUnavailableError, match="open_clip could not load it"):
        load_clip(spec)
