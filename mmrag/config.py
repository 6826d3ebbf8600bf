"""Settings: the one configuration object (MMRAG_ prefix, nested groups with `__`), built at entry points only."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DatabaseSettings(BaseModel):
    # None means SQLite inside data_dir; PostgreSQL: postgresql+psycopg://user@host/db
    url: str | None = None
    echo: bool = False


class IngestSettings(BaseModel):
    # pypdfium2 is the default: at 150 dpi it measured ~6x faster than poppler at the median page, ~3x at p95
    # (bench/render.py prints the comparison); pdf2image (poppler) stays available.
    renderer: Literal["pypdfium2", "pdf2image"] = "pypdfium2"
    dpi: int = Field(150, ge=36, le=600)
    # Decompression-bomb guard for images and the cap for a rendered PDF page (pixels).
    max_pixels: int = Field(60_000_000, ge=1)
    max_file_bytes: int = Field(512 * 1024 * 1024, ge=1)
    ocr: Literal["auto", "always", "never"] = "auto"
    ocr_lang: str = "eng"
    # With ocr=auto a PDF page is OCR'd when its text layer has fewer characters than this.
    ocr_min_chars: int = 16
    workers: int = Field(2, ge=0)  # decode/render/OCR worker processes; 0 runs them inline
    page_image_max_side: int = Field(2048, ge=64)  # stored page image is downscaled to this


class ClipSettings(BaseModel):
    enabled: bool = True
    # "ViT-B-32:laion2b_s34b_b79k" (open_clip name:pretrained tag), "hf-hub:org/repo" or "local-dir:/path"
    model: str = "ViT-B-32:laion2b_s34b_b79k"
    batch_size: int = Field(32, ge=1)


class ColpaliSettings(BaseModel):
    enabled: bool = True
    model: str = "vidore/colqwen2-v1.0"  # HF id or local directory
    batch_size: int = Field(4, ge=1)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"


class TextEmbedderSettings(BaseModel):
    enabled: bool = True
    model: str = "all-MiniLM-L6-v2"
    batch_size: int = Field(64, ge=1)


class EmbedderSettings(BaseModel):
    # "default" loads real weights; "tiny-random" builds random-init models for plumbing checks only.
    profile: Literal["default", "tiny-random"] = "default"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    clip: ClipSettings = ClipSettings()
    colpali: ColpaliSettings = ColpaliSettings()
    text: TextEmbedderSettings = TextEmbedderSettings()


class IndexSettings(BaseModel):
    backend: Literal["faiss", "chroma"] = "faiss"
    kind: Literal["flat", "ivf", "hnsw"] = "flat"
    ivf_lists: int = Field(1024, ge=1)  # IVF trains once it holds 39 vectors per list; exact until then
    ivf_nprobe: int = Field(32, ge=1)
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_search: int = Field(128, ge=1)
    use_gpu: bool = True  # move FAISS indexes to the GPU when faiss sees one
    multivector_shard_rows: int = Field(4_000_000, ge=1024)  # token rows per memory-mapped shard
    # Rewrite multi-vector shards once this share of their pages is deleted (tombstoned).
    compact_tombstone_ratio: float = Field(0.2, gt=0, le=1)


class RetrievalSettings(BaseModel):
    # Weighted reciprocal-rank fusion: rank-based, so it needs no score calibration across retrievers whose
    # scores live on unrelated scales (cosine, MaxSim sums, BM25); weights let a weak retriever count for less.
    rrf_k: int = Field(60, ge=1)
    weights: dict[str, float] = Field(
        default_factory=lambda: {"clip": 1.0, "colpali": 1.0, "text": 1.0, "lexical": 1.0}
    )
    depth: int = Field(50, ge=1)  # each retriever's ranking depth before fusion (grows when filters bite)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MMRAG_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Path("mmrag-data")
    database: DatabaseSettings = DatabaseSettings()
    ingest: IngestSettings = IngestSettings()
    embedders: EmbedderSettings = EmbedderSettings()
    index: IndexSettings = IndexSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    batch_pages: int = Field(32, ge=1)  # pages per commit (one checkpoint of vectors + SQL)

    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(self.data_dir / 'mmrag.db').resolve()}"
