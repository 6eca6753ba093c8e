"""``ConfigError``: a start-up or command-line problem told to the operator in one line.

Raised anywhere while Parley is being configured (settings, store URL, model,
profiles, keys); ``parley`` prints ``parley: <what is wrong>: <what to do>`` and
exits 2, with the traceback only at debug level. It is not a ``ParleyError``:
those are answers on the wire, this one never reaches a client.
"""

from __future__ import annotations


class ConfigError(Exception):
    """``what`` is wrong; ``fix`` says what to do about it (both one short clause)."""

    def __init__(self, what: str, fix: str = "") -> None:
        super().__init__(f"{what}: {fix}" if fix else what)
        self.what = what
        self.fix = fix
