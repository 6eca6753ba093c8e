"""Python client for Parley (used by the tests and the load-test tool)."""

from .client import PROTOCOL, ParleyClient, ParleyClosed, Reply

__all__ = ["PROTOCOL", "ParleyClient", "ParleyClosed", "Reply"]
