"""Tokenizers from ``tokenizer.json`` or from GGUF metadata, and incremental detokenization for streaming.

A GGUF ``gpt2``-model tokenizer is rebuilt as a ``tokenizers`` byte-level BPE from ``tokenizer.ggml.tokens``
and ``.merges``, with the pre-tokenizer that ``tokenizer.ggml.pre`` names and the CONTROL / USER_DEFINED
tokens added as special tokens, so ids equal llama.cpp's.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from exo_core.models.errors import ModelFormatError

if TYPE_CHECKING:
    from tokenizers import Tokenizer as HFTokenizer

    from exo_core.models.source import ModelSource

log = logging.getLogger(__name__)

_LLAMA3_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: GGUF ``tokenizer.ggml.pre`` values -> (split regex or None for GPT-2's, split digits one by one)
_PRE_TOKENIZERS: dict[str, tuple[str | None, bool]] = {
    "default": (None, False),
    "gpt-2": (None, False),
    "gpt2": (None, False),
    "smollm": (None, True),
    "llama-bpe": (_LLAMA3_RE, False),
    "llama3": (_LLAMA3_RE, False),
    "qwen2": (_QWEN2_RE, False),
}
_CONTROL, _USER_DEFINED = 3, 4
#: texts longer than this (characters) are encoded without holding the GIL
_LONG_TEXT = 4096


@dataclass
class Tokenizer:
    """Text <-> token ids for one model.

    Attributes:
        backend: the ``tokenizers.Tokenizer``.
        bos_token_id / eos_token_ids: special ids; ``add_bos`` says whether :meth:`encode` prepends BOS.
        bos_token / eos_token: their text (for chat templates).
    """

    backend: HFTokenizer
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    add_bos: bool = False
    bos_token: str = ""
    eos_token: str = ""
    special_ids: frozenset[int] = field(default_factory=frozenset)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; special tokens written in the text (``<|im_start|>``) become their ids.

        With ``add_special_tokens`` a BOS is prepended when the model asks for one (never twice).
        """
        if len(text) > _LONG_TEXT:  # encode_batch lets go of the GIL: the event loop keeps running meanwhile
            encoding = self.backend.encode_batch([text], add_special_tokens=add_special_tokens)[0]
        else:
            encoding = self.backend.encode(text, add_special_tokens=add_special_tokens)
        ids: list[int] = list(encoding.ids)
        if (
            add_special_tokens
            and self.add_bos
            and self.bos_token_id is not None
            and ids[:1] != [self.bos_token_id]
        ):
            ids.insert(0, self.bos_token_id)
        return ids

    @functools.cached_property
    def max_token_chars(self) -> int:
        """Most characters of text one token can stand for (the longest vocabulary entry, added tokens
        included): a text of ``n`` characters has at least ``n / max_token_chars`` tokens."""
        vocab = self.backend.get_vocab(with_added_tokens=True)
        return max((len(entry) for entry in vocab), default=1) or 1

    def decode(self, ids: list[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (invalid UTF-8 at the end shows as U+FFFD)."""
        return str(self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def token_text(self, token_id: int) -> str | None:
        """The raw vocabulary entry of an id (byte-level form), or ``None``."""
        out = self.backend.id_to_token(token_id)
        return None if out is None else str(out)

    def detokenizer(self, *, skip_special_tokens: bool = False) -> IncrementalDetokenizer:
        """A fresh :class:`IncrementalDetokenizer` for one stream of generated ids."""
        return IncrementalDetokenizer(self, skip_special_tokens=skip_special_tokens)


class IncrementalDetokenizer:
    """Turns a stream of token ids into text pieces that are safe to show.

    Text is decoded over a small window of recent ids and held back while it ends in an incomplete UTF-8
    sequence, so multi-byte characters split over tokens come out whole and merges (leading spaces) right.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = False) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self.text = ""

    def add(self, token_id: int) -> str:
        """Add one generated id; return the newly completed text (often ``""`` mid-character)."""
        self.ids.append(int(token_id))
        before = self._tok.decode(self.ids[self._prefix : self._read], skip_special_tokens=self._skip)
        after = self._tok.decode(self.ids[self._prefix :], skip_special_tokens=self._skip)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            delta = after[len(before) :]
            self._prefix, self._read = self._read, len(self.ids)
            self.text += delta
            return delta
        return ""

    def flush(self) -> str:
        """Text still held back (an incomplete character at the end of the stream shows as U+FFFD)."""
        before = self._tok.decode(self.ids[self._prefix : self._read], skip_special_tokens=self._skip)
        after = self._tok.decode(self.ids[self._prefix :], skip_special_tokens=self._skip)
        delta = after[len(before) :] if after.startswith(before) else ""
        self._prefix = self._read = len(self.ids)
        self.text += delta
        return delta


def tokenizer_from_gguf(metadata: dict[str, Any], *, where: str) -> Tokenizer:
    """Rebuild the tokenizer a GGUF file describes (``tokenizer.ggml.model == "gpt2"``)."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    kind = metadata.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ModelFormatError(
            f"{where}: GGUF tokenizer model {kind!r} is not supported (only 'gpt2' byte-level BPE); "
            "use the model's Hugging Face folder (tokenizer.json) instead"
        )
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges", [])]
    types = metadata.get("tokenizer.ggml.token_type")
    pre = str(metadata.get("tokenizer.ggml.pre", "default"))
    if pre not in _PRE_TOKENIZERS:
        raise ModelFormatError(
            f"{where}: GGUF pre-tokenizer {pre!r} is not supported (supported: {', '.join(_PRE_TOKENIZERS)})"
        )
    regex, digits = _PRE_TOKENIZERS[pre]
    vocab = {t: i for i, t in enumerate(tokens)}
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    steps: list[Any] = []
    if digits:
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    if regex is None:
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    else:
        steps.append(pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False))
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(steps)
    backend.decoder = decoders.ByteLevel()
    special: list[int] = []
    if types is not None:
        added = []
        for i, t in enumerate(types):
            if int(t) in (_CONTROL, _USER_DEFINED):
                added.append(AddedToken(tokens[i], special=int(t) == _CONTROL, normalized=False))
                special.append(i)
        backend.add_special_tokens(added)
    bos = metadata.get("tokenizer.ggml.bos_token_id")
    eos_ids = tuple(
        dict.fromkeys(
            int(metadata[k])
            for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
            if k in metadata
        )
    )
    return Tokenizer(
        backend=backend,
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=eos_ids,
        add_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
        bos_token=tokens[int(bos)] if bos is not None else "",
        eos_token=tokens[eos_ids[0]] if eos_ids else "",
        special_ids=frozenset(special),
    )


def _token_content(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return "" if value is None else str(value)


def tokenizer_from_hf(folder: Any, *, eos_token_ids: tuple[int, ...] = ()) -> Tokenizer:
    """Load ``folder/tokenizer.json`` (+ ``tokenizer_config.json`` for BOS/EOS)."""
    import json

    from tokenizers import Tokenizer as HFTokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ModelFormatError(f"{folder} has no tokenizer.json (needed to tokenize prompts)")
    backend = HFTokenizer.from_file(str(path))
    cfg: dict[str, Any] = {}
    cfg_path = folder / "tokenizer_config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    bos_text, eos_text = _token_content(cfg.get("bos_token")), _token_content(cfg.get("eos_token"))
    bos_id = backend.token_to_id(bos_text) if bos_text else None
    eos_id = backend.token_to_id(eos_text) if eos_text else None
    eos_ids = tuple(dict.fromkeys([*(i for i in [eos_id] if i is not None), *eos_token_ids]))
    special = frozenset(int(i) for i, tok in backend.get_added_tokens_decoder().items() if tok.special)
    return Tokenizer(
        backend=backend,
        bos_token_id=bos_id,
        eos_token_ids=eos_ids,
        add_bos=False,
        bos_token=bos_text,
        eos_token=eos_text,
        special_ids=special,
    )


@functools.lru_cache(maxsize=8)
def load_tokenizer(source: ModelSource) -> Tokenizer:
    """The tokenizer of ``source`` (GGUF metadata or ``tokenizer.json``), cached per source."""
    from exo_core.models.source import load_config, open_gguf_source

    if source.format == "gguf":
        return tokenizer_from_gguf(open_gguf_source(source).metadata, where=str(source.path))
    return tokenizer_from_hf(source.path, eos_token_ids=load_config(source).eos_token_ids)
