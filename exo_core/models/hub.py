"""Downloads from the Hugging Face hub (``huggingface_hub``), fetching only the files a node needs.

Metadata files (config, tokenizer, index) always come down; weight files only when they hold tensors of the
requested layer range (a sharded repo's ``model.safetensors.index.json`` says which). Progress is shown by
``huggingface_hub``'s own progress bars. Any failure (offline, unreachable endpoint, missing repo) becomes a
:class:`ModelNotFoundError` saying what is missing and how to provide it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from exo_core.models.errors import ModelNotFoundError

log = logging.getLogger(__name__)

META_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
)
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def endpoint_reachable(endpoint: str | None, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to the hub endpoint opens within ``timeout`` (huggingface_hub itself retries
    refused connections with back-off for ~30 s, so an unreachable hub is detected here first)."""
    from huggingface_hub import constants

    url = urlsplit(endpoint or constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError as exc:
        log.warning("hub endpoint %s is unreachable: %s", url.geturl(), exc)
        return False


def _download(
    repo: str,
    filename: str,
    *,
    revision: str | None,
    cache_dir: Path | None,
    endpoint: str | None,
    required: bool,
    local_only: bool = False,
) -> Path | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(
            hf_hub_download(
                repo,
                filename,
                revision=revision,
                cache_dir=cache_dir,
                endpoint=endpoint,
                etag_timeout=10,
                local_files_only=local_only,
            )
        )
    except LocalEntryNotFoundError as exc:
        if not required:
            return None
        raise ModelNotFoundError(
            f"cannot download {filename} of {repo}: the Hugging Face hub is not reachable "
            f"({endpoint or 'default endpoint'}; HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}) "
            "and it is not in the local cache. Connect to the internet (and unset HF_HUB_OFFLINE), "
            "or download "
            "the model elsewhere and pass its folder or .gguf file with --model-path."
        ) from exc
    except EntryNotFoundError:
        if required:
            raise ModelNotFoundError(f"hub repo {repo} has no {filename}") from None
        return None
    except Exception as exc:  # offline mode, connection refused, 404 repo, auth: all become one clear error
        if not required and not _is_connection_problem(exc):
            log.debug("optional file %s of %s not fetched: %r", filename, repo, exc)
            return None
        raise ModelNotFoundError(
            f"cannot download {filename} of {repo} from the Hugging Face hub "
            f"({endpoint or 'default endpoint'}): {type(exc).__name__}: {exc}. "
            "Connect to the internet (and unset HF_HUB_OFFLINE), or download the model elsewhere and pass "
            "its folder or .gguf file with --model-path."
        ) from exc


def _is_connection_problem(exc: Exception) -> bool:
    from huggingface_hub.errors import OfflineModeIsEnabled, RepositoryNotFoundError

    if isinstance(exc, OfflineModeIsEnabled | RepositoryNotFoundError):
        return True
    return "Connect" in type(exc).__name__ or "Timeout" in type(exc).__name__ or isinstance(exc, OSError)


def is_cached(repo: str, *, revision: str | None = None, cache_dir: Path | None = None) -> bool:
    """Whether ``repo``'s config is in the local hub cache already (no network; a partial download counts:
    its missing weight files are fetched when a shard needs them)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "config.json", cache_dir=cache_dir, revision=revision)
    return isinstance(found, str)


def download_metadata(
    repo: str, *, revision: str | None = None, cache_dir: Path | None = None, endpoint: str | None = None
) -> Path:
    """Fetch config, tokenizer files and the weight index of ``repo``; return the local snapshot folder.

    When the endpoint is unreachable only the local cache is used.
    """
    local_only = _offline() or not endpoint_reachable(endpoint)
    config = _download(
        repo,
        "config.json",
        revision=revision,
        cache_dir=cache_dir,
        endpoint=endpoint,
        required=True,
        local_only=local_only,
    )
    assert config is not None
    for name in (*META_FILES[1:], INDEX_FILE):
        _download(
            repo,
            name,
            revision=revision,
            cache_dir=cache_dir,
            endpoint=endpoint,
            required=False,
            local_only=local_only,
        )
    return config.parent


def download_weights(
    repo: str,
    folder: Path,
    files: list[str] | None,
    *,
    revision: str | None = None,
    cache_dir: Path | None = None,
    endpoint: str | None = None,
) -> None:
    """Fetch the weight ``files`` of ``repo`` (all of them when ``None``) into its snapshot ``folder``."""
    if files is None:
        index = folder / INDEX_FILE
        if index.exists():
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        else:
            files = [SINGLE_FILE]
    missing = [f for f in files if not (folder / f).exists()]
    local_only = bool(missing) and (_offline() or not endpoint_reachable(endpoint))
    for name in missing:
        log.info("downloading %s from %s", name, repo)
        _download(
            repo,
            name,
            revision=revision,
            cache_dir=cache_dir,
            endpoint=endpoint,
            required=True,
            local_only=local_only,
        )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
