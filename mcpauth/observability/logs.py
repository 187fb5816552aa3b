"""Log formats (``LOG_FORMAT``) and the ``/mcp`` access line.

* :class:`JSONFormatter` (``LOG_FORMAT=json``): every record is one JSON object on one line:
  ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger``, ``message``, the access
  line's fields when it is one, and ``exc_info``/``stack_info`` as strings.
* :class:`TextFormatter` (``LOG_FORMAT=text``, the default): ``time level logger message``,
  then an access line's fields as ``key=value``.

:func:`access` writes the one access line of a ``/mcp`` request on the ``mcpauth.access``
logger (INFO): request id (the response's ``X-Request-ID``), trace id, HTTP method and path,
JSON-RPC method, tool, outcome, status, duration, client id, tenant, client IP and protocol
version. It never holds a token, an argument value or a header other than those. Run uvicorn
with ``--no-access-log`` (or switch ``uvicorn.access`` off in ``LOGGING``, as the reference
project does), so there is one line per request, not two.

:func:`ensure_handler`: when the project's ``LOGGING`` gives the ``mcpauth`` loggers no handler
at all (Django's default), the ASGI application adds one console handler in
``MCPAUTH_LOG_FORMAT`` at start, so the access lines are written in any project.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

access_log = logging.getLogger("mcpauth.access")

#: The attribute of a log record that holds an access line's fields.
FIELDS_ATTR = "mcp_fields"
#: The access line's field names, in order.
ACCESS_FIELDS = (
    "request_id",
    "trace_id",
    "http_method",
    "path",
    "method",
    "tool",
    "outcome",
    "status",
    "duration_ms",
    "client_id",
    "tenant",
    "client_ip",
    "protocol_version",
)


def _iso(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class JSONFormatter(logging.Formatter):
    """One JSON object per record (newlines inside values are escaped, so one line)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, Mapping):
            data.update(fields)
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc_info"] = record.exc_text
        if record.stack_info:
            data["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(data, default=str, separators=(",", ":"))


_NEEDS_QUOTES = re.compile(r'[\s"=\\]')


def _text_value(value: Any) -> str:
    if value is None or value == "":
        return "-"
    text = str(value)
    if _NEEDS_QUOTES.search(text) is not None or not text.isprintable():
        return json.dumps(text)
    return text


def _one_line(value: Any) -> str:
    """``value`` for the message part of a line: control characters escaped (``\\n``), so a
    request path cannot start a forged line of its own."""
    text = str(value)
    return text if text.isprintable() else json.dumps(text)[1:-1]


class TextFormatter(logging.Formatter):
    """``2026-11-30 12:00:00,123 INFO logger message key=value ...`` (readable, one line)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, FIELDS_ATTR, None)
        if not isinstance(fields, Mapping):
            return line
        pairs = " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        head, sep, rest = line.partition("\n")  # keep a traceback below the fields
        return f"{head} {pairs}{sep}{rest}"


def ensure_handler(log_format: str) -> bool:
    """Give ``mcpauth``'s loggers a console handler (INFO) when no handler would write their
    records; return whether one was added. A project that configured any handler on the way
    (``LOGGING``) is left as it is."""
    if access_log.hasHandlers():
        return False
    handler = logging.StreamHandler()
    handler.setFormatter(JSONFormatter() if log_format == "json" else TextFormatter())
    owner = logging.getLogger("mcpauth")
    owner.addHandler(handler)
    if owner.level == logging.NOTSET:
        owner.setLevel(logging.INFO)
    return True


def access(fields: Mapping[str, Any]) -> None:
    """Log one ``/mcp`` request's access line (``fields``: :data:`ACCESS_FIELDS`)."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    # made directly, not through .info(): the caller's frame would be the same line every time,
    # and looking it up (logging's findCaller) costs more than formatting the line
    record = access_log.makeRecord(
        access_log.name,
        logging.INFO,
        __file__,
        0,
        "%s %s %s %s",
        (
            _one_line(fields["http_method"]),
            _one_line(fields["path"]),
            _one_line(fields["method"] or "-"),
            fields["status"],
        ),
        None,
        extra={FIELDS_ATTR: fields},
    )
    access_log.handle(record)
