"""Chat templates: the model's own jinja template (GGUF ``tokenizer.chat_template`` or
``tokenizer_config.json``), rendered in a sandbox the way Hugging Face ``apply_chat_template`` does."""

from __future__ import annotations

import functools
import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from exo_core.models.errors import ModelFormatError

if TYPE_CHECKING:
    import jinja2

    from exo_core.models.source import ModelSource

log = logging.getLogger(__name__)


def chat_template(source: ModelSource) -> str:
    """The model's chat template source text.

    Raises:
        ModelFormatError: the model ships no chat template.
    """
    from exo_core.models.source import open_gguf_source

    if source.format == "gguf":
        template = open_gguf_source(source).metadata.get("tokenizer.chat_template")
    else:
        template = None
        jinja_file = source.path / "chat_template.jinja"
        cfg_file = source.path / "tokenizer_config.json"
        if jinja_file.is_file():
            template = jinja_file.read_text(encoding="utf-8")
        elif cfg_file.is_file():
            template = json.loads(cfg_file.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
    if not isinstance(template, str) or not template:
        raise ModelFormatError(
            f"model {source.model_id} has no chat template; send a plain prompt (completions), not messages"
        )
    return template


def _raise(message: str) -> None:
    raise ModelFormatError(f"chat template error: {message}")


def _tojson(
    value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False
) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    from jinja2 import TemplateSyntaxError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except TemplateSyntaxError as exc:
        raise ModelFormatError(f"the model's chat template does not compile: {exc}") from exc


def render_chat(
    source: ModelSource,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    template: str | None = None,
    **extra: Any,
) -> str:
    """Render ``messages`` (``[{"role": ..., "content": ...}]``) with the model's chat template.

    Args:
        source: the model (its template and BOS/EOS token texts are used).
        messages: OpenAI-style messages.
        add_generation_prompt: end with the assistant turn opener so the model answers.
        template: override the model's template.
        **extra: more template variables (``tools``, ...).

    Returns:
        The prompt text; tokenize it with ``Tokenizer.encode`` (special tokens in it map to their ids).
    """
    from exo_core.models.tokenizer import load_tokenizer

    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise ValueError(f"message {i} is not an object with a 'role' field: {m!r}")
    tok = load_tokenizer(source)
    compiled = _compile(template if template is not None else chat_template(source))
    try:
        return compiled.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=tok.bos_token,
            eos_token=tok.eos_token,
            **extra,
        )
    except ModelFormatError:
        raise
    except Exception as exc:
        raise ModelFormatError(f"rendering the chat template failed: {type(exc).__name__}: {exc}") from exc
