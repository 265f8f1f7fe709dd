"""Weight readers: GGUF and safetensors mapped to one internal naming, float32 out.

Internal names (all matrices ``(out_features, in_features)``, Hugging Face row order for q/k)::

    embed, norm, lm_head, rope_freqs
    layers.{i}.attn_norm  layers.{i}.q  .k  .v  .o  .q_bias  .k_bias  .v_bias
    layers.{i}.ffn_norm   layers.{i}.gate  .up  .down

GGUF files of the ``llama`` family store q/k rows permuted for llama.cpp's adjacent-pair RoPE; the GGUF
reader un-permutes them so every engine can use one (rotate-half) RoPE for both formats.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from exo_core.models.config import ModelConfig
from exo_core.models.errors import ModelFormatError
from exo_core.models.gguf_file import GGUFFile

log = logging.getLogger(__name__)

LAYER_PARTS = (
    "attn_norm",
    "q",
    "k",
    "v",
    "o",
    "q_bias",
    "k_bias",
    "v_bias",
    "ffn_norm",
    "gate",
    "up",
    "down",
)

_GGUF_GLOBAL = {
    "token_embd.weight": "embed",
    "output_norm.weight": "norm",
    "output.weight": "lm_head",
    "rope_freqs.weight": "rope_freqs",
}
_GGUF_LAYER = {
    "attn_norm.weight": "attn_norm",
    "attn_q.weight": "q",
    "attn_k.weight": "k",
    "attn_v.weight": "v",
    "attn_output.weight": "o",
    "attn_q.bias": "q_bias",
    "attn_k.bias": "k_bias",
    "attn_v.bias": "v_bias",
    "ffn_norm.weight": "ffn_norm",
    "ffn_gate.weight": "gate",
    "ffn_up.weight": "up",
    "ffn_down.weight": "down",
}
_HF_GLOBAL = {"model.embed_tokens.weight": "embed", "model.norm.weight": "norm", "lm_head.weight": "lm_head"}
_HF_LAYER = {
    "input_layernorm.weight": "attn_norm",
    "self_attn.q_proj.weight": "q",
    "self_attn.k_proj.weight": "k",
    "self_attn.v_proj.weight": "v",
    "self_attn.o_proj.weight": "o",
    "self_attn.q_proj.bias": "q_bias",
    "self_attn.k_proj.bias": "k_bias",
    "self_attn.v_proj.bias": "v_bias",
    "post_attention_layernorm.weight": "ffn_norm",
    "mlp.gate_proj.weight": "gate",
    "mlp.up_proj.weight": "up",
    "mlp.down_proj.weight": "down",
}
_GGUF_RE = re.compile(r"blk\.(\d+)\.(.+)")
_HF_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")
#: GGUF architectures whose converter permuted q/k rows (llama.cpp rope type NORM).
_GGUF_PERMUTED_ARCHS = ("llama", "mistral")


def layer_of(name: str) -> int | None:
    """The layer index of an internal tensor name, or ``None`` for global tensors."""
    if name.startswith("layers."):
        return int(name.split(".", 2)[1])
    return None


def names_for_shard(config: ModelConfig, available: Iterable[str], first: int, last: int) -> list[str]:
    """Internal names a shard holding layers ``first..last`` (inclusive) needs, among ``available``."""
    have = set(available)
    wanted = [f"layers.{i}.{p}" for i in range(first, last + 1) for p in LAYER_PARTS]
    if first == 0:
        wanted.append("embed")
    if last == config.n_layers - 1:
        wanted += ["norm", "lm_head" if "lm_head" in have else "embed"]
    if "rope_freqs" in have:
        wanted.append("rope_freqs")
    return [n for n in dict.fromkeys(wanted) if n in have]


class WeightReader(Protocol):
    """Reads tensors by internal name; implementations map their own format's names."""

    def names(self) -> list[str]:
        """Every internal tensor name the model has."""

    def get(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a new, writable, C-contiguous float32 array."""

    def nbytes_float32(self, name: str) -> int:
        """Bytes the tensor occupies once dequantized to float32."""

    def rows(self, name: str) -> RowLookup:
        """A lookup of single rows of a 2-D tensor, reading the stored (possibly quantized) data."""

    def stored(self, name: str) -> StoredTensor | None:
        """Tensor ``name`` as stored (GGUF blocks), or ``None`` when the format holds plain floats."""

    def release(self) -> None:
        """The caller has copied what it needs: let go of the file pages read so far, so they stop counting
        in the process's resident memory (reads after it still work; a no-op where nothing stays mapped)."""


@dataclass(frozen=True)
class StoredTensor:
    """A tensor's bytes as the file stores them, for engines that compute on quantized blocks.

    Attributes:
        raw: read-only uint8 ``(rows, bytes per row)`` view of the (memory-mapped) file.
        qtype: the ``gguf.GGMLQuantizationType`` value.
        shape: ``(rows, cols)``, ``(out_features, in_features)`` for a matrix.
        row_order: indices that put the rows in Hugging Face order (``rows[row_order]``), or ``None``
            when they are already (the GGUF q/k permutation, see :func:`unpermute_qk`).
    """

    raw: np.ndarray
    qtype: int
    shape: tuple[int, ...]
    row_order: np.ndarray | None


class RowLookup:
    """Rows of a 2-D tensor on demand (``lookup(ids) -> float32 (len(ids), cols)``), without dequantizing the
    whole tensor: an embedding table costs its stored size (memory-mapped), not its float32 size.

    Attributes:
        nbytes: bytes of the stored data backing the lookup.
        shape: the full tensor's shape.
    """

    def __init__(
        self, raw: np.ndarray, convert: Callable[[np.ndarray], np.ndarray], shape: tuple[int, int]
    ) -> None:
        self._raw = raw
        self._convert = convert
        self.shape = shape
        self.nbytes = int(raw.nbytes)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        out = self._convert(np.asarray(self._raw[ids]))
        return np.ascontiguousarray(out, dtype=np.float32).reshape(len(ids), self.shape[1])


class GGUFWeights:
    """:class:`WeightReader` over a :class:`GGUFFile` (dequantizes one tensor at a time)."""

    def __init__(self, gguf: GGUFFile, config: ModelConfig) -> None:
        self._file = gguf
        self._config = config
        self._map: dict[str, str] = {}
        for gname in gguf.tensors:
            internal = _map_name(gname, _GGUF_GLOBAL, _GGUF_LAYER, _GGUF_RE)
            if internal is not None:
                self._map[internal] = gname

    def names(self) -> list[str]:
        return list(self._map)

    def nbytes_float32(self, name: str) -> int:
        return int(np.prod(self._file.tensors[self._map[name]].shape)) * 4

    def rows(self, name: str) -> RowLookup:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        info = self._file.tensors[self._map[name]]
        qtype = GGMLQuantizationType(info.qtype)
        return RowLookup(
            self._file.raw(info.name), lambda raw: dequantize(raw, qtype), (info.shape[0], info.shape[1])
        )

    def get(self, name: str) -> np.ndarray:
        arr = self._file.tensor(self._map[name])
        heads = self._permuted_heads(name)
        return arr if heads is None else unpermute_qk(arr, heads)

    def stored(self, name: str) -> StoredTensor:
        info = self._file.tensors[self._map[name]]
        heads = self._permuted_heads(name)
        order = None if heads is None else unpermute_qk(np.arange(info.shape[0]), heads)
        return StoredTensor(self._file.raw(info.name), info.qtype, info.shape, order)

    def release(self) -> None:
        self._file.release_pages()

    def _permuted_heads(self, name: str) -> int | None:
        """Heads of a q/k tensor whose rows llama.cpp's converter permuted, else ``None``."""
        part = name.rsplit(".", 1)[-1]
        if self._config.architecture in _GGUF_PERMUTED_ARCHS and part in ("q", "k", "q_bias", "k_bias"):
            return self._config.n_heads if part.startswith("q") else self._config.n_kv_heads
        return None


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: adjacent-pair rows back to Hugging Face's half-split order."""
    rows = w.shape[0]
    hd = rows // n_heads
    tail = w.shape[1:]
    return np.ascontiguousarray(w.reshape(n_heads, hd // 2, 2, *tail).swapaxes(1, 2).reshape(rows, *tail))


_ST_DTYPES: dict[str, np.dtype[Any]] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "F64": np.dtype("<f8"),
}


@dataclass(frozen=True)
class _STEntry:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


class SafetensorsWeights:
    """:class:`WeightReader` over a Hugging Face folder of ``*.safetensors`` (with or without an index).

    The header (a JSON table of dtype, shape and byte range) is read directly so tensors are memory-mapped and
    BF16, which NumPy lacks, is widened to float32 by a bit shift; the files are the ones the ``safetensors``
    library writes. Only the files holding requested tensors are opened.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._entries: dict[str, _STEntry] = {}
        self._hf_names: dict[str, str] = {}
        for hf_name, file in hf_weight_map(folder).items():
            internal = _map_name(hf_name, _HF_GLOBAL, _HF_LAYER, _HF_RE)
            if internal is not None:
                self._hf_names[internal] = hf_name
                self._entries[internal] = _STEntry(folder / file, "", (), 0, 0)  # header read lazily

    def names(self) -> list[str]:
        return list(self._entries)

    def files_for(self, names: Iterable[str]) -> list[str]:
        """Weight file names (relative to the folder) holding ``names``."""
        return sorted({self._entries[n].file.name for n in names})

    def _entry(self, name: str) -> _STEntry:
        entry = self._entries[name]
        if entry.dtype:
            return entry
        header, offset = _read_st_header(entry.file)
        meta = header.get(self._hf_names[name])
        if meta is None:
            raise ModelFormatError(
                f"{entry.file} lacks tensor {self._hf_names[name]} (the index says it holds it)"
            )
        offsets: Any = meta["data_offsets"]
        dims: Any = meta["shape"]
        start, end = (int(x) for x in offsets)
        entry = _STEntry(
            entry.file, str(meta["dtype"]), tuple(int(d) for d in dims), offset + start, offset + end
        )
        self._entries[name] = entry
        return entry

    def nbytes_float32(self, name: str) -> int:
        return int(np.prod(self._entry(name).shape)) * 4

    def _mapped(self, name: str) -> tuple[np.ndarray, str]:
        e = self._entry(name)
        dtype = _ST_DTYPES.get(e.dtype)
        if dtype is None:
            raise ModelFormatError(f"{e.file}: tensor {self._hf_names[name]} has unsupported dtype {e.dtype}")
        raw = np.memmap(e.file, dtype=np.uint8, mode="r", offset=e.start, shape=(e.end - e.start,))
        return np.asarray(raw).view(dtype).reshape(e.shape), e.dtype

    def get(self, name: str) -> np.ndarray:
        data, dtype = self._mapped(name)
        return _to_f32(data, dtype)

    def rows(self, name: str) -> RowLookup:
        data, dtype = self._mapped(name)
        return RowLookup(data, lambda raw: _to_f32(raw, dtype), (data.shape[0], data.shape[1]))

    def release(self) -> None:
        """Nothing to do: each tensor is mapped only while it is read (a row lookup maps its own table)."""

    def stored(self, name: str) -> None:
        return None


def _to_f32(data: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (data.astype(np.uint32) << 16).view(np.float32)
    return np.array(data, dtype=np.float32, order="C")


def _read_st_header(path: Path) -> tuple[dict[str, dict[str, object]], int]:
    try:
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > 100_000_000:
                raise ModelFormatError(f"{path} is not a safetensors file (header length {n})")
            header = json.loads(f.read(n))
    except OSError as exc:
        raise ModelFormatError(f"cannot read {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{path}: corrupt safetensors header: {exc}") from exc
    header.pop("__metadata__", None)
    return header, 8 + n


def hf_weight_map(folder: Path) -> dict[str, str]:
    """HF tensor name -> file name, from ``model.safetensors.index.json`` or the ``*.safetensors`` files."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            return dict(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
        except (OSError, KeyError, json.JSONDecodeError) as exc:
            raise ModelFormatError(f"{index} is not a valid safetensors index: {exc}") from exc
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelFormatError(
            f"{folder} holds no *.safetensors weights (and no model.safetensors.index.json)"
        )
    out: dict[str, str] = {}
    for f in files:
        header, _ = _read_st_header(f)
        out.update(dict.fromkeys(header, f.name))
    return out


def _map_name(name: str, glob: dict[str, str], layer: dict[str, str], pattern: re.Pattern[str]) -> str | None:
    if name in glob:
        return glob[name]
    m = pattern.fullmatch(name)
    if m and m.group(2) in layer:
        return f"layers.{int(m.group(1))}.{layer[m.group(2)]}"
    log.debug("ignoring tensor %s", name)
    return None
