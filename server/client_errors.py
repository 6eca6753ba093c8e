"""A client's protocol violation is the client's fault: one info line, never an error with a traceback.

uvicorn logs some violations it has fully handled as errors with a traceback (invalid
UTF-8 in a text frame: the socket is closed with 1007 and nothing else happens). This
logging filter, attached to uvicorn's loggers by ``logs.logging_config``, rewrites such
a record to one info line naming the error; everything else passes untouched.
"""

from __future__ import annotations

import logging

#: Exceptions that only ever mean "the peer broke the protocol" when uvicorn logs them.
CLIENT_FAULTS: tuple[type[BaseException], ...] = (UnicodeDecodeError,)
try:
    from websockets.exceptions import ProtocolError as _WebSocketsProtocolError

    CLIENT_FAULTS += (_WebSocketsProtocolError,)
except ImportError:  # pragma: no cover
    pass
try:
    from h11 import RemoteProtocolError

    CLIENT_FAULTS += (RemoteProtocolError,)
except ImportError:  # pragma: no cover
    pass

#: Longest error text kept in the line.
DETAIL_CHARS = 200


class ClientProtocolErrors(logging.Filter):
    """Rewrite a logged client protocol violation to one info line (dropped below info level)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not isinstance(exc, CLIENT_FAULTS):
            return True
        message = record.getMessage().strip().rstrip(".")
        record.msg = "client protocol error: %s (%s: %s)"
        record.args = (message, type(exc).__name__, str(exc)[:DETAIL_CHARS])
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)
