"""Downloads from the Hugging Face hub (``huggingface_hub``), fetching only the files a node needs.

Metadata files (config, tokenizer, index) always come down; weight files only when they hold tensors of the
requested layer range (a sharded repo's ``model.safetensors.index.json`` says which). Progress is shown by
``huggingface_hub``'s own progress bars. Any failure (offline, unreachable endpoint, missing repo) becomes a
:class:`ModelNotFoundError` saying what is missing and how to provide it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from exo_core.models.errors import ModelNotFoundError

log = logging.getLogger(__name__)

META_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
              "special_tokens_map.json")
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def _download(repo: str, filename: str, *, revision: str | None, cache_dir: Path | None, endpoint: str | None,
              required: bool) -> Path | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(
            hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir, endpoint=endpoint,
                            etag_timeout=10)
        )
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


def download_metadata(repo: str, *, revision: str | None = None, cache_dir: Path | None = None,
                      endpoint: str | None = None) -> Path:
    """Fetch config, tokenizer files and the weight index of ``repo``; return the local snapshot folder."""
    config = _download(repo, "config.json", revision=revision, cache_dir=cache_dir, endpoint=endpoint,
                       required=True)
    assert config is not None
    for name in (*META_FILES[1:], INDEX_FILE):
        _download(repo, name, revision=revision, cache_dir=cache_dir, endpoint=endpoint, required=False)
    return config.parent


def download_weights(repo: str, folder: Path, files: list[str] | None, *, revision: str | None = None,
                     cache_dir: Path | None = None, endpoint: str | None = None) -> None:
    """Fetch the weight ``files`` of ``repo`` (all of them when ``None``) into its snapshot ``folder``."""
    if files is None:
        index = folder / INDEX_FILE
        if index.exists():
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        else:
            files = [SINGLE_FILE]
    missing = [f for f in files if not (folder / f).exists()]
    for name in missing:
        log.info("downloading %s from %s", name, repo)
        _download(repo, name, revision=revision, cache_dir=cache_dir, endpoint=endpoint, required=True)
