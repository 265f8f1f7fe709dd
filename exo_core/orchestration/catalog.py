"""The models this node can serve: id -> local files, config and tokenizer, each loaded once.

A model id means the same model on every node: registry ids (``smollm2-135m``) resolve on each node by
itself; ``--model-path`` serves a local file or folder under the id of its name (every node of the cluster
needs the same file under the same name).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from exo_core.models.config import ModelConfig
from exo_core.models.source import (
    REGISTRY,
    ModelSource,
    available_offline,
    head_in_layers,
    load_config,
    resolve_model,
    stored_bytes,
)
from exo_core.models.tokenizer import Tokenizer, load_tokenizer

#: seconds an offline-availability check of a model stays valid
_READY_TTL = 30.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """Everything the API node needs to turn text into a request and tokens back into text."""

    source: ModelSource
    config: ModelConfig
    tokenizer: Tokenizer
    #: the output head's weight in blocks, for the plan (:func:`exo_core.models.source.head_in_layers`)
    head_layers: int = 0
    #: bytes of the model's weights as stored (0: unknown), for the memory check of a plan
    model_bytes: int = 0


def model_id_for_path(path: Path) -> str:
    """The id a ``--model-path`` is served under: the file name without ``.gguf``, or the folder name."""
    name = path.expanduser().name
    return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name


class Catalog:
    """Resolves model ids to sources once and caches configs and tokenizers."""

    def __init__(self, default_model: str, model_path: Path | None = None) -> None:
        self._paths: dict[str, Path] = {}
        #: model id -> (available without a download, when checked)
        self._ready: dict[str, tuple[bool, float]] = {}
        if model_path is not None:
            model_id = model_id_for_path(model_path)
            self._paths[model_id] = model_path.expanduser()
            default_model = model_id
        self.default_model = default_model
        self._sources: dict[str, ModelSource] = {}
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = anyio.Lock()

    def model_ids(self) -> list[str]:
        """Ids listed by ``GET /v1/models``: the default first, then local paths and registry ids."""
        ids = [self.default_model, *self._paths, *REGISTRY]
        return list(dict.fromkeys(ids))

    def ready(self, model_id: str) -> bool:
        """Whether this node can serve ``model_id`` without a download (an explicit path always counts)."""
        if model_id in self._sources or model_id in self._paths:
            return True
        now = time.monotonic()
        known = self._ready.get(model_id)
        if known is None or now - known[1] > _READY_TTL:  # a file check; a download may change it later
            known = self._ready[model_id] = (available_offline(model_id), now)
        return known[0]

    def knows(self, model_id: str) -> bool:
        return model_id in self._paths or model_id in REGISTRY or model_id == self.default_model

    def source(self, model_id: str, layers: tuple[int, int] | None = None) -> ModelSource:
        """Resolve ``model_id`` (blocking: may read files or download; call from a worker thread)."""
        cached = self._sources.get(model_id)
        if cached is not None:
            return cached
        path = self._paths.get(model_id)
        source = resolve_model(path if path is not None else model_id, layers=layers)
        if path is not None:
            source = ModelSource(model_id, source.format, source.path, source.hub_repo)
        self._sources[model_id] = source
        return source

    async def load(self, model_id: str) -> LoadedModel:
        """Config and tokenizer of ``model_id``, loaded once (in a worker thread)."""
        loaded = self._loaded.get(model_id)
        if loaded is not None:
            return loaded
        async with self._lock:
            loaded = self._loaded.get(model_id)
            if loaded is None:
                loaded = await anyio.to_thread.run_sync(self._load_blocking, model_id)
                self._loaded[model_id] = loaded
        return loaded

    def _load_blocking(self, model_id: str) -> LoadedModel:
        source = self.source(model_id, layers=(0, 0))
        config = load_config(source)
        tokenizer = load_tokenizer(source)
        log.info(
            "model %s: %d layers, vocab %d (%s)", model_id, config.n_layers, config.vocab_size, source.path
        )
        return LoadedModel(source, config, tokenizer, head_in_layers(source, config), stored_bytes(source))
