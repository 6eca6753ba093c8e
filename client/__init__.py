"""Python client for Parley: typed streaming turns over a resumable session, and a low-level API.

``async with ParleyClient(url) as c: reply = await c.ask("Hi")``; see docs/client.md.
"""

from .client import PROTOCOL, ParleyClient, Reply
from .errors import ParleyClosed, ParleyError, ResponseTimeout, UnknownServerError
from .events import UnknownEvent
from .sync import SyncParleyClient, SyncTurn
from .tools import CallState, ClientTool, PendingCall, tool
from .turn import TurnStream

__all__ = [
    "PROTOCOL",
    "CallState",
    "ClientTool",
    "ParleyClient",
    "ParleyClosed",
    "ParleyError",
    "PendingCall",
    "Reply",
    "ResponseTimeout",
    "SyncParleyClient",
    "SyncTurn",
    "TurnStream",
    "UnknownEvent",
    "UnknownServerError",
    "tool",
]
