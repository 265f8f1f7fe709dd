"""Log line formats: ``text`` for people, ``json`` (one object per line) for log collectors.

``--log-format json`` (``EXO_LOG_FORMAT=json``) writes each record as
``{"time": "2026-12-06T12:00:00.123+00:00", "level": "INFO", "logger": "exo_core.transport", "message": "...",
"exception": "Traceback ..."}`` (``exception`` only when the record carries one), so Loki, Vector, Fluent Bit
or ``jq`` read it without a parsing rule.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


def formatter(name: str) -> logging.Formatter:
    """The formatter of ``--log-format NAME`` (``text`` for anything else: a bad name is reported later,
    when the settings are validated)."""
    return JsonFormatter() if name.lower() == "json" else logging.Formatter(TEXT_FORMAT)
