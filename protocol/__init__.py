"""Parley's wire contract (v1): messages, codes, codec. Pure: no I/O of any kind."""

from .codec import decode_server, encode, error_event, parse_client, seq_of, with_seq
from .errors import ERROR_CLASSES, CloseCode, ErrorCode, ParleyError, ProtocolError
from .messages import PROTOCOL_VERSION

__all__ = [
    "ERROR_CLASSES",
    "PROTOCOL_VERSION",
    "CloseCode",
    "ErrorCode",
    "ParleyError",
    "ProtocolError",
    "decode_server",
    "encode",
    "error_event",
    "parse_client",
    "seq_of",
    "with_seq",
]
