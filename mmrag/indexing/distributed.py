"""Bulk jobs on a Ray cluster: the job's stages with decode/render/OCR as Ray tasks and each retriever's model in a
pool of Ray actors, the job's loop and writer unchanged in this process (`mmrag index --ray`, settings.ray).

    this process (the driver)                      the cluster
    plan (SQL) ──FileTask──▶ RayLoader ───────────▶ load task (CPU): decode, render, OCR, page image to the
                                                      shared storage dir, model inputs into the object store
    LoadedFile (text, paths, refs) ◀── metadata ───┘        │ inputs stay there, passed by reference
    pages to SQL (pending) ──PendingPage──▶ RayEmbedding ──▶ embed actor per retriever (GPU): fetches its inputs
    writer: stores + SQL (the crash ordering) ◀── vectors ──┘ from the load task's node, returns vectors

What passes through this process: each file's metadata (page text, word boxes, image paths), every page's vectors
(the writer adds them to the stores), and one SQL transaction per batch, as in a local job. Model inputs (pixels)
go from the node that decoded them to the actor's node without touching it. The SQL job table stays the source of
truth and the resume point: a driver killed mid-job loses only what it had not committed, and the same command
resumes. A task or actor call whose worker or node died is retried by Ray (settings.ray.max_retries); an input
lost with its node is made again by re-running its load task (Ray's lineage).

Why Ray core tasks and actors rather than a Ray Data pipeline: the loop's planning already streams (decided items in
chunks), a long PDF's page ranges are only known once its first range is read, a duplicate waits for its original,
and a file that kills its worker is retried alone; keeping the loop means a Ray job records progress, counts and
failures exactly as a local one (the same code), while Ray does the placement, retries and data movement.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from mmrag.config import IngestSettings, RaySettings, Settings
from mmrag.errors import ConfigError
from mmrag.indexing.embedding import BatchVectors, PendingPage, embed_with
from mmrag.indexing.loading import LoadFile
from mmrag.ingest import cleanup
from mmrag.ingest.results import FileFailure, LoadedFile
from mmrag.ingest.worker import FileTask, load_file, load_files
from mmrag.inputs import InputSpec
from mmrag.retrievers import RETRIEVERS, Embedded, Embedders

log = logging.getLogger(__name__)

T = TypeVar("T")
LoadModel = Callable[[Settings, str], Any]  # (settings, retriever name) → its embedder, run in each actor

NAMESPACE = "mmrag"
FILES_PER_RAY_TASK = 64
CLIENT_ATTEMPTS, CLIENT_RETRY_S = 8, 3.0  # a Ray Client connection refused by a head that has just started
ACTOR_PREFIX = "mmrag-"  # embed actors are named mmrag-<retriever>-<n>-<job token>


def connect(settings: RaySettings) -> None:
    """Join the cluster settings.ray.address names (once per process). "auto": the one RAY_ADDRESS or `ray start`
    on this host names, else a local cluster this process starts (and stops when it exits)."""
    import ray

    if ray.is_initialized():
        return
    if settings.address is None:
        raise ConfigError("no Ray cluster configured: set MMRAG_RAY__ADDRESS (or pass --ray)")
    common = {"namespace": NAMESPACE, "log_to_driver": False, "logging_level": logging.WARNING}
    if settings.address != "auto":
        _check_reachable(settings.address)
        for attempt in range(CLIENT_ATTEMPTS):
            try:
                ray.init(address=settings.address, **common)
                return
            except ConnectionError as exc:
                # A head that has just started can fail a Ray Client connection ("Starting Ray client server
                # failed": the per-client server it starts exits): a few seconds later the same call succeeds.
                if "client server failed" not in str(exc) or attempt + 1 == CLIENT_ATTEMPTS:
                    raise ConfigError(f"cannot reach the Ray cluster at {settings.address!r}: {exc}") from None
                log.warning("the Ray cluster at %s refused the connection (%s); trying again", settings.address,
                            str(exc).splitlines()[-1] if str(exc).strip() else exc)
                time.sleep(CLIENT_RETRY_S)
    try:
        ray.init(address="auto", **common)
    except ConnectionError:  # none running here: start one in this process
        local: dict[str, Any] = {"include_dashboard": False}  # its processes would take CPU from the job
        if settings.object_store_memory is not None:
            local["object_store_memory"] = settings.object_store_memory
        if settings.temp_dir is not None:
            local["_temp_dir"] = str(settings.temp_dir.resolve())
        ray.init(**common, **local)


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """One TCP connection to HOST:PORT (or ray://HOST:PORT) first: ray.init would retry an address nobody answers
    for minutes before it says so."""
    location = urlsplit(address if "://" in address else f"//{address}")
    try:
        port = location.port
    except ValueError:
        port = None
    if not location.hostname or port is None:
        raise ConfigError(f"Ray address {address!r} is not HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((location.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address!r}: {exc}") from None


# ---------------------------------------------------------------------------------------------------------------
# Loading: Ray tasks in place of worker processes


@dataclass(frozen=True)
class RemoteInput:
    """A page's model input left in Ray's object store: the `page`-th page of the `file`-th file of the load task
    whose output `ref` is (one object per input spec). `nbytes` lets a long PDF's merge bound its inputs as for
    local ones (mmrag.indexing.loading.merge_ranges)."""

    ref: Any  # ray.ObjectRef
    file: int
    page: int
    nbytes: int


@dataclass(frozen=True)
class _Slot:
    nbytes: int


def _load_remote(
    files: list[FileTask], settings: IngestSettings, data_dir: str, specs: tuple[InputSpec, ...], load: LoadFile
) -> tuple[Any, ...]:
    """A Ray task: load_files in a temporary directory of its own; returns the files' metadata (each page's
    inputs replaced by slots) and then, per input spec, every page's input (files × pages), as separate objects so
    each retriever's actors fetch only their own."""
    from mmrag.ingest.worker import _nbytes

    with tempfile.TemporaryDirectory(prefix="mmrag-ray-") as temp, cleanup.temp_files_in(Path(temp)):
        results = load_files(files, settings, data_dir, specs, load)
    per_spec: list[list[list[Any]]] = [[] for _ in specs]
    meta: list[LoadedFile | FileFailure] = []
    for result in results:
        for values in per_spec:
            values.append([])
        if isinstance(result, FileFailure):
            meta.append(result)
            continue
        pages = []
        for page in result.pages:
            inputs = page.inputs or (None,) * len(specs)
            for values, value in zip(per_spec, inputs, strict=True):
                values[-1].append(value)
            slots = tuple(None if value is None else _Slot(_nbytes(value)) for value in page.inputs)
            pages.append(dataclasses.replace(page, inputs=slots))
        meta.append(dataclasses.replace(result, pages=pages))
    return (meta, *per_spec)


def _get(ref: Any) -> Any:
    """ray.get with the task's own exception re-raised, and a dead worker or node as BrokenProcessPool (the job
    then loads each of the task's files alone, so only the one that kills its worker fails)."""
    import ray
    from ray import exceptions

    died = (exceptions.WorkerCrashedError, exceptions.NodeDiedError, exceptions.OutOfMemoryError,
            exceptions.ObjectLostError, exceptions.ActorDiedError)  # after Ray's own retries
    try:
        return ray.get(ref)
    except exceptions.RayTaskError as exc:
        raise exc.as_instanceof_cause() from None
    except died as exc:
        raise BrokenProcessPool(f"a Ray worker died: {type(exc).__name__}: {exc}") from exc


@dataclass
class _Loading:
    """A load task out on the cluster: result() gives its metadata and the references to its inputs."""

    refs: list[Any]
    done: Callable[[_Loading], None]

    def result(self) -> tuple[list[LoadedFile | FileFailure], list[Any]]:
        try:
            return _get(self.refs[0]), self.refs[1:]
        finally:
            self.done(self)


class RayLoader:
    """The Loader of a Ray job (the same interface as mmrag.indexing.loading.Loader): each task of files is a Ray
    task on whichever node has a free CPU, at most `limit` out at once; their results' inputs stay in the object
    store (RemoteInput) until an embed actor reads them. `submit` runs work of the job's own (BM25 ahead) on a
    thread here: it writes the collection's files, which live beside this process."""

    def __init__(
        self,
        settings: RaySettings,
        workers: int = 0,
        *,
        warm_modules: Sequence[str] = (),
        shared_memory: bool = True,
        load_file: LoadFile = load_file,
        temp_root: Path | None = None,
    ) -> None:
        import ray

        connect(settings)
        self.load_file = load_file
        cpus = ray.cluster_resources().get("CPU", 1.0)
        self.workers = max(1, int(cpus // settings.load_cpus))  # tasks the cluster runs at once
        self.limit = settings.tasks_in_flight or 2 * self.workers
        # A Ray task costs more to hand out and collect than a local pool's (scheduling, object store puts): more
        # small files to a task; files_per_task still splits a small job across the cluster.
        self.files_per_task = FILES_PER_RAY_TASK
        self.generation = 0  # Loader's: Ray replaces dead workers itself, so there is only ever one "pool"
        self._task = ray.remote(_load_remote)
        self._options = {"num_cpus": settings.load_cpus, "max_retries": settings.max_retries,
                         "retry_exceptions": False}
        self._out: dict[int, _Loading] = {}
        self._here = ThreadPoolExecutor(1, thread_name_prefix="mmrag-driver")
        self._shared: tuple[Any, Any, Any] | None = None  # (settings, specs) put once, and their refs

    def _args(self, settings: IngestSettings, specs: tuple[InputSpec, ...]) -> tuple[Any, Any]:
        """The job's settings and input specs, put in the object store once rather than sent with every task."""
        import ray

        if self._shared is None or self._shared[0] is not settings or self._shared[1] is not specs:
            self._shared = (settings, specs, (ray.put(settings), ray.put(specs)))
        return self._shared[2]

    def load(self, files: list[FileTask], settings: IngestSettings, data_dir: str,
             specs: tuple[InputSpec, ...]) -> _Loading:
        settings_ref, specs_ref = self._args(settings, specs)
        refs = self._task.options(num_returns=1 + len(specs), **self._options).remote(
            files, settings_ref, data_dir, specs_ref, self.load_file
        )
        loading = _Loading(list(refs) if specs else [refs], lambda done: self._out.pop(id(done), None))
        self._out[id(loading)] = loading
        return loading

    def load_alone(self, files: list[FileTask], settings: IngestSettings, data_dir: str,
                   specs: tuple[InputSpec, ...]) -> list[LoadedFile | FileFailure]:
        return self.received(self.load(files, settings, data_dir, specs).result())

    def received(self, value: tuple[list[LoadedFile | FileFailure], list[Any]]) -> list[LoadedFile | FileFailure]:
        meta, refs = value
        results: list[LoadedFile | FileFailure] = []
        for index, result in enumerate(meta):
            if isinstance(result, LoadedFile):
                result = dataclasses.replace(result, pages=[
                    dataclasses.replace(page, inputs=tuple(
                        None if slot is None else RemoteInput(refs[k], index, number, slot.nbytes)
                        for k, slot in enumerate(page.inputs)
                    ))
                    for number, page in enumerate(result.pages)
                ])
            results.append(result)
        return results

    def submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        return self._here.submit(fn, *args)

    def replace_broken_pool(self, generation: int) -> None:
        """Nothing to replace: Ray starts workers as they are needed."""

    def close(self) -> None:
        import ray

        for loading in list(self._out.values()):  # tasks of a job that stopped on an error
            ray.cancel(loading.refs[0], force=False)
        self._out.clear()
        self._here.shutdown(wait=True)


# ---------------------------------------------------------------------------------------------------------------
# Embedding: a pool of Ray actors per retriever


class EmbedActor:
    """Holds one retriever's model on its node (a GPU when it reserved one) and embeds batches of pages there."""

    def __init__(self, settings: Settings, retriever: str, data_dir: str, load: LoadModel | None = None) -> None:
        import torch

        if not torch.cuda.is_available():
            # Ray starts workers with one thread (OMP_NUM_THREADS=1 unless CPUs are reserved): a CPU actor uses the
            # cores it reserved, or, reserving none, the node's, as a local job's models share them with its workers.
            reserved = int(settings.ray.cpus_per_actor or 0)
            torch.set_num_threads(max(1, reserved or os.cpu_count() or 1))
        self.settings = settings
        self.retriever = RETRIEVERS.get(retriever)
        self.embedder = load(settings, retriever) if load is not None else self.retriever.load(settings)
        self.data_dir = Path(data_dir)
        self.spec = self.retriever.input_spec(self.embedder, settings, self.data_dir)

    def model_record(self) -> Any:
        return self.retriever.model_record(self.embedder)

    def node(self) -> str:
        """The id of the Ray node it runs on."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def embed(self, pages: list[tuple[int, str | None, str, Any]]) -> Embedded | None:
        """Vectors of (page id, image path, text, input or RemoteInput or None) pages; inputs left in the object
        store are fetched from wherever they are, once per object."""
        import ray

        refs = list({id(value.ref): value.ref for *_, value in pages if isinstance(value, RemoteInput)}.values())
        fetched = dict(zip((id(ref) for ref in refs), ray.get(refs) if refs else [], strict=True))
        name = self.retriever.name
        pending = []
        for page_id, image_path, text, value in pages:
            if isinstance(value, RemoteInput):
                value = fetched[id(value.ref)][value.file][value.page]
            pending.append(PendingPage(page_id, image_path, text, {} if value is None else {name: value}))
        return embed_with(self.retriever, self.embedder, pending, self.data_dir, settings=self.settings,
                          spec=self.spec)


def actor_resources(settings: RaySettings, *, actors: int) -> tuple[float, float]:
    """(GPUs, CPUs) each embed actor reserves, checked against the cluster: a request no node can meet, or actors
    that would leave no CPU for a load task, would wait forever; they are a ConfigError instead."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    has_gpu = any(node.get("GPU", 0.0) >= 1 for node in nodes)
    gpus = settings.gpus_per_actor if settings.gpus_per_actor is not None else (1.0 if has_gpu else 0.0)
    cpus = settings.cpus_per_actor if settings.cpus_per_actor is not None else (1.0 if gpus > 0 else 0.0)
    if not any(node.get("GPU", 0.0) >= gpus and node.get("CPU", 0.0) >= cpus for node in nodes):
        raise ConfigError(f"no node of the Ray cluster has {gpus:g} GPUs and {cpus:g} CPUs for an embed actor "
                          "(MMRAG_RAY__GPUS_PER_ACTOR, MMRAG_RAY__CPUS_PER_ACTOR)")
    total_cpus = sum(node.get("CPU", 0.0) for node in nodes)
    if actors * cpus + settings.load_cpus > total_cpus:
        raise ConfigError(f"{actors} embed actors of {cpus:g} CPUs each leave the cluster's {total_cpus:g} CPUs "
                          f"no room for a load task of {settings.load_cpus:g}: lower MMRAG_RAY__ACTORS or "
                          "MMRAG_RAY__CPUS_PER_ACTOR, or add nodes")
    return gpus, cpus


class RayEmbedding:
    """A job's embedding stage on Ray actors: one pool per retriever with a model and a store, `settings.ray.actors`
    actors each, which load the model as this process did (Retriever.load), or with `load` (a benchmark's models).
    A batch goes to the next actor of every pool; calling returns a function that waits for its
    vectors, so the committer keeps `batches_out` batches out at once."""

    def __init__(self, services: Any, embedders: Embedders, stores: Any, specs: dict[str, InputSpec], *,
                 load: LoadModel | None = None) -> None:
        import ray

        settings: Settings = services.settings
        connect(settings.ray)
        ray_settings = settings.ray
        names = [r.name for r in RETRIEVERS if embedders.get(r.name) is not None and stores.get(r.name) is not None]
        gpus, cpus = actor_resources(ray_settings, actors=len(names) * ray_settings.actors)
        actor = ray.remote(EmbedActor)
        # A call is retried for as long as its actor may come back (Ray marks a lost node dead only after missed
        # heartbeats, and each try meanwhile counts): once its restarts are spent, it fails with ActorDiedError.
        options = {"num_cpus": cpus, "num_gpus": gpus, "max_restarts": ray_settings.max_retries,
                   "max_task_retries": -1}
        data_dir = str(services.storage_dir.resolve())
        self.embedders = embedders
        # Named (`ray list actors` shows whose they are): mmrag-<retriever>-<n>-<this job's token>.
        token = uuid.uuid4().hex[:8]
        self.pools: dict[str, list[Any]] = {
            name: [
                actor.options(name=f"{ACTOR_PREFIX}{name}-{n}-{token}", **options).remote(
                    settings, name, data_dir, load
                )
                for n in range(ray_settings.actors)
            ]
            for name in names
        }
        self.batches_out = 2 * ray_settings.actors  # every actor busy, and one batch more waiting for each
        self._turn = itertools.count()
        self._checked = False

    def _check_models(self) -> None:
        """Every actor's model must be the one this process opened the stores with (the vectors' dimension, and
        what SQL records as their model): settings that differ on the nodes are an error, not a mixed collection."""
        for name, pool in self.pools.items():
            theirs = _get(pool[0].model_record.remote())
            ours = RETRIEVERS.get(name).model_record(self.embedders.get(name))
            if theirs != ours:
                raise ConfigError(f"the Ray actors for {name!r} loaded {theirs}, this process {ours}: the nodes "
                                  "must be configured alike (MMRAG_EMBEDDERS__...)")
        self._checked = True

    def __call__(self, pages: Sequence[PendingPage]) -> Callable[[], BatchVectors]:
        if not self._checked:
            self._check_models()
        turn = next(self._turn)
        refs = {}
        for name, pool in self.pools.items():
            refs[name] = pool[turn % len(pool)].embed.remote(
                [(p.page_id, p.image_path, p.text, p.inputs.get(name)) for p in pages]
            )

        def vectors() -> BatchVectors:
            embedded = {name: _get(ref) for name, ref in refs.items()}
            return {name: value for name, value in embedded.items() if value is not None}

        return vectors

    def close(self) -> None:
        import ray

        for pool in self.pools.values():
            for actor in pool:
                ray.kill(actor)
        self.pools = {}


def ray_stages(settings: Settings, **overrides: Any) -> Any:
    """The JobStages of a job on the cluster settings.ray names; `overrides` as JobStages' (a test's load_file)."""
    from mmrag.indexing.job import JobStages

    fields = {"loader": partial(RayLoader, settings.ray), "embedding": RayEmbedding, "inputs_in_workers": True}
    return JobStages(**{**fields, **overrides})
