"""Settings: the one configuration object (MMRAG_ prefix, nested groups with `__`), built at entry points only."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class DatabaseSettings(BaseModel):
    # None means SQLite inside data_dir; PostgreSQL: postgresql+psycopg://user@host/db
    url: str | None = None
    echo: bool = False


class IngestSettings(BaseModel):
    # pypdfium2 is the default: it measured faster than poppler (`python -m bench render` prints the comparison);
    # pdf2image (poppler) stays available.
    renderer: Literal["pypdfium2", "pdf2image"] = "pypdfium2"
    dpi: int = Field(150, ge=36, le=600)
    # Decompression-bomb guard for images and the cap for a rendered PDF page (pixels).
    max_pixels: int = Field(60_000_000, ge=1)
    max_file_bytes: int = Field(512 * 1024 * 1024, ge=1)
    ocr: Literal["auto", "always", "never"] = "auto"
    ocr_lang: str = "eng"
    # With ocr=auto a PDF page is OCR'd when its text layer has fewer characters than this.
    ocr_min_chars: int = 16
    # With ocr=auto an image file that looks like a photo (colourful, and no band of rows that could be a line of
    # text) is not OCR'd: OCR is most of a photo's indexing time and rarely finds text in one (a street sign).
    # Receipts and scans are not colourful, so they are still OCR'd (README: the figures on real photos and
    # receipts). A photo-only collection is fastest with ocr=never.
    ocr_skip_photos: bool = True
    # Text lines shorter than this (pixels) are enlarged to it before OCR; 0 OCRs images at their own size.
    ocr_line_height: int = Field(32, ge=0, le=200)
    # The second OCR engine (RapidOCR, mmrag.ingest.rapid) reads an OCR'd page too and adds the lines Tesseract's
    # reading lacks or read with other dates or amounts: on every OCR'd page (always); where Tesseract is unsure, read
    # no date, or read a total's figures unclearly (unsure); or never. Chosen on the shared SROIE receipts (README).
    second_ocr: Literal["always", "unsure", "never"] = "unsure"
    # Store where each page's words are (mmrag.layout: search highlights, cited regions); about 1.7 KB a receipt
    # page in SQL. False stores none: searches and answers work as before, without highlights or regions.
    word_boxes: bool = True
    workers: int = Field(2, ge=0)  # decode/render/OCR worker processes; 0 runs them inline
    # Where the ColPali processor makes a page's model input: in the workers (they then import colpali-engine,
    # seconds per fork server) or in this process from the stored page image. auto: workers when the models run
    # on CUDA, where this process must keep the GPU fed; here otherwise, so small CPU jobs start at once.
    colpali_inputs_in_workers: Literal["auto", "always", "never"] = "auto"
    # Workers hand model inputs back through /dev/shm where it is writable (mmrag.ingest.shared); false: the pipe.
    shared_memory: bool = True
    # Batches that may wait for the embedding thread while the next one is decoded and written to SQL.
    batches_ahead: int = Field(2, ge=1)
    page_image_max_side: int = Field(2048, ge=64)  # stored page image is downscaled to this


class ClipSettings(BaseModel):
    enabled: bool = True
    # "ViT-B-32:laion2b_s34b_b79k" (open_clip name:pretrained tag), "hf-hub:org/repo" or "local-dir:/path";
    # None: the default for the device the models run on (mmrag.embedders.chosen_model)
    model: str | None = None
    batch_size: int = Field(32, ge=1)


class ColpaliSettings(BaseModel):
    enabled: bool = True
    model: str | None = None  # HF id or local directory; None: the default for the device (chosen_model)
    batch_size: int = Field(4, ge=1)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"


class TextEmbedderSettings(BaseModel):
    enabled: bool = True
    model: str = "all-MiniLM-L6-v2"
    batch_size: int = Field(64, ge=1)


class BipageSettings(BaseModel):
    """The single-vector Bi* page retriever (BiQwen2, BiPali, ...; mmrag.retrievers.bipage). Off unless enabled and
    given a checkpoint: there is no default one, and one that cannot load would be a failing model in every job."""

    enabled: bool = False
    model: str | None = None  # HF id or local directory of a Bi* checkpoint; None: the retriever is off
    batch_size: int = Field(4, ge=1)


class EmbedderSettings(BaseModel):
    # "default" loads real weights; "tiny-random" builds random-init models for plumbing checks only.
    profile: Literal["default", "tiny-random"] = "default"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    clip: ClipSettings = ClipSettings()
    colpali: ColpaliSettings = ColpaliSettings()
    text: TextEmbedderSettings = TextEmbedderSettings()
    bipage: BipageSettings = BipageSettings()


class QdrantSettings(BaseModel):
    """The qdrant backend (index.backend = "qdrant"): a server or cluster at `url`, else an embedded engine in `path`
    (default <data_dir>/qdrant; one process at a time: `mmrag serve` then runs the jobs it is sent)."""

    url: str | None = None  # http://qdrant:6333 (REST) of a server or a cluster's node
    api_key: SecretStr | None = Field(None, repr=False)
    path: Path | None = None
    # The engine in `path`: edge is Qdrant's own (qdrant-edge-py: its segments, WAL, HNSW and quantisation);
    # client is qdrant-client's local mode (a Python re-implementation of the same API that searches exactly).
    embedded: Literal["edge", "client"] = "edge"
    prefer_grpc: bool = False
    timeout_s: int = Field(60, ge=1)
    # Qdrant collections are named <prefix>-<mmrag collection id>-<retriever>: several mmrag deployments can share
    # one Qdrant under different prefixes.
    prefix: str = Field("mmrag", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
    # Multi-vector pages are searched as the local store is (index.multivector_search): exact MaxSim over every
    # token, or "candidates": Qdrant's prefetch by MaxSim over 8 centroids a page, its rerank by every token.
    # Vectors and their HNSW graphs on disk (memory-mapped) instead of in RAM, and quantisation of the dense and
    # centroid vectors (scalar int8 or binary; the full multi-vectors that rerank are never quantised):
    # `python -m bench qdrant` measures what each costs in recall.
    on_disk: bool = False
    quantization: Literal["none", "scalar", "binary"] = "none"
    # A cluster's layout for new collections; None leaves Qdrant's defaults (one shard, no replicas).
    shard_number: int | None = Field(None, ge=1)
    replication_factor: int | None = Field(None, ge=1)


class IndexSettings(BaseModel):
    backend: Literal["faiss", "chroma", "qdrant"] = "faiss"
    kind: Literal["flat", "ivf", "hnsw"] = "flat"
    ivf_lists: int = Field(1024, ge=1)  # IVF trains once it holds 39 vectors per list; exact until then
    ivf_nprobe: int = Field(32, ge=1)
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_search: int = Field(128, ge=1)
    use_gpu: bool = True  # move FAISS indexes to the GPU when faiss sees one
    multivector_shard_rows: int = Field(4_000_000, ge=1024)  # token rows per memory-mapped shard
    # Rewrite multi-vector shards once this share of their pages is deleted (tombstoned). (BM25 flags deleted pages
    # at once and rewrites a segment past half deleted: mmrag/index/bm25.py.)
    compact_tombstone_ratio: float = Field(0.2, gt=0, le=1)
    # How often at most a query opens a collection's stores again after another process (an `mmrag index` beside
    # `mmrag serve`) changed them: a bulk job changes them every batch, and reopening reads every vector from disk.
    reader_refresh_seconds: float = Field(5.0, ge=0)
    # exact: MaxSim over every stored token (the fused kernel on CUDA). candidates: MaxSim over 8 centroids per
    # page (FAISS HNSW beyond 250k pages on CPU) picks this many candidates, exact MaxSim reranks them
    # (python -m bench search / bench gpu measure recall@10 against exact).
    # bipage: the single-vector Bi* retriever's FAISS top multivector_candidates pages, reranked by exact MaxSim
    # (its model and store must be on: embedders.bipage).
    multivector_search: Literal["exact", "candidates", "bipage"] = "exact"
    multivector_candidates: int = Field(512, ge=1)
    # Merge similar page tokens before storing (colpali-engine hierarchical pooling): ~1/factor of the tokens, at a
    # small cost in ranking quality (`python -m bench search` measures nDCG@10 against the unpooled store).
    multivector_pool_factor: int = Field(1, ge=1, le=16)
    qdrant: QdrantSettings = QdrantSettings()


class RaySettings(BaseModel):
    """Bulk jobs on a Ray cluster (mmrag.indexing.distributed): decode/render/OCR as Ray tasks, each retriever's
    model in a pool of Ray actors, the writer (SQL and the stores) in the job's own process."""

    # None: the job runs here (worker processes, the models in this process). "auto": the cluster RAY_ADDRESS or
    # `ray start` on this host names, else a local one this process starts; "ray://head:10001" or "head:6379": that
    # cluster. Every node must mount storage_dir (MMRAG_SHARED_DIR) at the same path and have mmrag installed.
    address: str | None = None
    load_cpus: float = Field(1.0, gt=0)  # CPUs one decode/render/OCR task reserves
    # Load tasks out at once (their results are held in the object store until embedded); None: 2 per cluster CPU.
    tasks_in_flight: int | None = Field(None, ge=1)
    actors: int = Field(1, ge=1)  # actors per retriever model (each holds one copy of the model)
    # GPUs each actor reserves (fractions share a GPU); None: 1 when the cluster has GPUs, else 0 (CPU actors).
    gpus_per_actor: float | None = Field(None, ge=0)
    # CPUs each actor reserves; None: 1 for a GPU actor (it feeds the GPU), 0 for a CPU one (its model then shares
    # the cores with the load tasks, as the models of a local job share them with its worker processes).
    cpus_per_actor: float | None = Field(None, ge=0)
    # Retries of a task or actor call whose worker or node died (a file that kills its worker fails after these,
    # alone); Ray re-runs the load task of an input lost with its node.
    max_retries: int = Field(3, ge=0)
    object_store_memory: int | None = Field(None, ge=75 * 1024 * 1024)  # bytes, for a cluster this process starts
    # Where a cluster this process starts keeps its session files; None: Ray's default (/tmp/ray).
    temp_dir: Path | None = None


class RetrievalSettings(BaseModel):
    # Weighted reciprocal-rank fusion: rank-based, so it needs no score calibration across retrievers whose
    # scores live on unrelated scales (cosine, MaxSim sums, BM25); weights let a weak retriever count for less.
    # rrf_k was chosen with the text weight on real receipts (`python -m bench sroie --tune`): a small k keeps
    # BM25's top ranks apart. Re-tune on your own pages with `mmrag eval --generate N`.
    rrf_k: int = Field(10, ge=1)
    # Retriever name -> weight, for the retrievers whose own default weight (mmrag.retrievers: text 0.05, the
    # others 1.0) should not apply; names are checked against the retriever registry when services are built.
    weights: dict[str, float] = Field(default_factory=dict)
    depth: int = Field(50, ge=1)  # each retriever's ranking depth before fusion (grows when filters bite)
    # Near-duplicates (mmrag.near_duplicates): pages whose CLIP image vectors have at least this cosine similarity.
    # Here rather than in a group of their own: like depth, they shape a read of the clip store, nothing is written.
    # 0.92 is a CLIP figure (re-encoded and resized copies score ~0.98+, mild crops ~0.9, different shots of one scene
    # lower); the stand-in embedder's figures differ, so `python -m bench near-duplicates` prints both where it can.
    near_duplicate_threshold: float = Field(0.92, gt=0, le=1)
    # The nearest neighbours each page is linked to when a collection is grouped (each of them at the threshold).
    near_duplicate_neighbours: int = Field(16, ge=1, le=1024)


class TagSettings(BaseModel):
    """Zero-shot tags for photos (mmrag.tags): CLIP scores a label list against each photo's vector."""

    enabled: bool = True  # off, or CLIP off: no tags are written (search, filters and counts still work)
    # One label a line ('#' starts a comment); None: mmrag.tags.DEFAULT_LABELS. A collection re-tagged with its own
    # list (`mmrag tag --labels`) keeps that list for its later jobs.
    labels_file: Path | None = None
    prompt: str = "a photo of a {label}."  # what each label's text vector is made from
    # A tag is kept when its share of the softmax over the labels (CLIP's own logit scale) is at least min_score.
    min_score: float = Field(0.1, gt=0, le=1)
    max_tags: int = Field(5, ge=1, le=50)  # per photo, best first


class AnswererSettings(BaseModel):
    # extractive quotes page lines (no model); transformers runs a VLM in-process; openai calls a chat-completions
    # server (vLLM, Ollama, llama.cpp). A model that cannot be loaded falls back to extractive, and the API says so.
    kind: Literal["extractive", "transformers", "openai"] = "extractive"
    # transformers: HF id in the local cache or a local directory; None picks Qwen/Qwen2.5-VL-3B-Instruct on a GPU and
    # HuggingFaceTB/SmolVLM-256M-Instruct on CPU. openai: the name the server serves; None sends the GPU default id.
    model: str | None = None
    base_url: str = "http://localhost:8000/v1"  # openai: up to /v1; /chat/completions is appended
    api_key: SecretStr | None = None  # openai: sent as a Bearer token; SecretStr keeps it out of logs and reprs
    timeout_s: float = Field(120.0, gt=0)  # openai: longest wait for the next bytes (a non-streamed answer: all of it)
    max_retries: int = Field(2, ge=0)  # openai: retries after connect errors, 429 and 5xx, with exponential backoff
    max_new_tokens: int = Field(512, ge=1)
    # Each page image is downscaled to this longest side and to about this many vision tokens, counted as Qwen2-VL
    # counts them (one token per 28x28 pixels); the k retrieved pages cost about k times the budget.
    max_image_side: int = Field(1024, ge=28)
    image_token_budget: int = Field(1024, ge=4)
    # Characters of each page's text layer/OCR put into the prompt beside its image; 0 sends images only.
    page_text_chars: int = Field(1500, ge=0)
    device: str = "auto"  # transformers: auto | cpu | cuda | cuda:N
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # transformers: auto is bf16 on GPU, fp32 on CPU


class ApiSettings(BaseModel):
    """The query service (`mmrag serve`): where it listens, who may use it, and how much a request may carry."""

    host: str = "127.0.0.1"
    # Not 8000: that is vLLM's default port, and the answerer's default base_url points there.
    port: int = Field(8080, ge=1, le=65535)
    # API key → the collections it may read and write ("*": every collection). Empty: no keys, everything open.
    # From the environment as JSON: MMRAG_API__KEYS='{"key-for-a": ["a"], "admin-key": ["*"]}'
    keys: dict[str, list[str]] = Field(default_factory=dict, repr=False)  # kept out of logs and reprs
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024)  # whole request body, multipart included
    max_upload_bytes: int = Field(32 * 1024 * 1024, ge=1)  # one uploaded file (or query image)
    max_upload_pixels: int = Field(40_000_000, ge=1)  # an uploaded or query image's width x height
    max_upload_files: int = Field(32, ge=1)  # files in one POST /v1/documents
    # Named server-side folders POST /v1/jobs may index; a client names a root and a path relative to it, e.g.
    # MMRAG_API__JOB_ROOTS='{"corpus": "/corpus"}'. Empty: server-side jobs are off.
    job_roots: dict[str, Path] = Field(default_factory=dict)
    cors_origins: list[str] = Field(default_factory=list)
    thumbnail_side: int = Field(256, ge=16, le=2048)
    # /metrics reads the index sizes from SQL at most this often (0: on every scrape). They are counts over every
    # document, page and vector, which grow with the collection, and Prometheus scrapes every 15 s by default.
    metrics_sizes_seconds: float = Field(30.0, ge=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MMRAG_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Path("mmrag-data")
    # Where page images, uploads, thumbnails and each collection's files (its writer lock, its derived indexes, the
    # local backends' vectors) live: a directory every API replica and indexer of one deployment mounts (README:
    # replicas). None: data_dir. data_dir keeps what is this process's own (job temporary files, the SQLite
    # database and the embedded Qdrant engine when they are used).
    shared_dir: Path | None = None
    database: DatabaseSettings = DatabaseSettings()
    ingest: IngestSettings = IngestSettings()
    embedders: EmbedderSettings = EmbedderSettings()
    index: IndexSettings = IndexSettings()
    answerer: AnswererSettings = AnswererSettings()
    api: ApiSettings = ApiSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    ray: RaySettings = RaySettings()
    tags: TagSettings = TagSettings()
    batch_pages: int = Field(32, ge=1)  # pages per commit (one checkpoint of vectors + SQL)

    @model_validator(mode="after")
    def _qdrant_path(self) -> Settings:
        """The embedded Qdrant engine lives in the data directory unless a server or a path is named."""
        qdrant = self.index.qdrant
        if self.index.backend == "qdrant" and qdrant.url is None and qdrant.path is None:
            qdrant.path = self.data_dir / "qdrant"
        return self

    def storage_dir(self) -> Path:
        return self.shared_dir if self.shared_dir is not None else self.data_dir

    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(self.data_dir / 'mmrag.db').resolve()}"
