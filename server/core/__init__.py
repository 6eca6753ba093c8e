"""The session core, transport-neutral: who may open what (``Admission``), what a client's
messages do (``Dispatcher`` over a type -> handler table), and what it reads
(``SessionReader``: the log from a cursor, replay then live, written to a ``Sink``).

A transport (``server/transports/``) is a thin adapter: it turns its wire into text
frames for the dispatcher and offers a ``Sink`` for the reader. Nothing here imports
Starlette, uvicorn or websockets.
"""

from .admission import Admission, refusal_error, trace_id_from
from .dispatch import Caller, Dispatcher, FrameBudget, Handler
from .handlers import Handlers
from .reader import Opening, ReaderState, SessionReader
from .sink import Sink, SinkClosed, SlowPeer, WriteDeadline

__all__ = [
    "Admission",
    "Caller",
    "Dispatcher",
    "FrameBudget",
    "Handler",
    "Handlers",
    "Opening",
    "ReaderState",
    "SessionReader",
    "Sink",
    "SinkClosed",
    "SlowPeer",
    "WriteDeadline",
    "refusal_error",
    "trace_id_from",
]
