"""Validation of a model's structured output, bounded in size and time, off the event loop.

``protocol/schema_budget.py`` refuses schemas whose smallest answer is huge, but an
accepted schema can still be slow to *check*: a backtracking ``pattern`` such as
``^(a+)+$`` against 40 characters, or ``uniqueItems`` over thousands of objects,
runs for minutes inside C code that never yields the GIL, so neither the event loop
nor a thread would get control back. Validation therefore runs in one child
process that is killed when it overruns ``timeout_s`` and started again for the
next request; an output over ``max_chars`` is refused without being parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from parley.protocol.errors import SchemaValidationFailed

#: Outputs longer than this are not validated (answered ``schema_validation_failed``).
MAX_OUTPUT_CHARS = 256 * 1024
#: How long one validation may run before its worker is killed.
TIMEOUT_S = 2.0
#: How long a new worker may take to start (import jsonschema) before the check fails.
START_TIMEOUT_S = 30.0


def _serve(conn: Connection) -> None:  # pragma: no cover - runs in the child process
    """The worker: validate (schema, instance) pairs until the pipe closes."""
    import jsonschema

    conn.send("ready")
    while True:
        try:
            schema, instance = conn.recv()
        except (EOFError, OSError):
            return
        try:
            jsonschema.validate(instance, schema)
            conn.send(None)
        except jsonschema.ValidationError as exc:
            conn.send(f"output does not match the schema: {exc.message[:200]}")
        except jsonschema.SchemaError:
            conn.send("the requested schema is invalid")
        except RecursionError:
            conn.send("the schema is too deeply recursive to check")
        except Exception as exc:
            conn.send(f"the output could not be checked ({type(exc).__name__})")


async def _recv(conn: Connection, timeout_s: float) -> Any:
    """One message from the worker, waiting on the event loop (never blocking it) up to ``timeout_s``."""
    loop = asyncio.get_running_loop()
    readable = loop.create_future()
    fd = conn.fileno()
    loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
    try:
        await asyncio.wait_for(readable, timeout_s)
    finally:
        loop.remove_reader(fd)
    return conn.recv()


class OutputValidator:
    """One lazily started worker process; validations queue behind a lock, each bounded in time."""

    def __init__(self, timeout_s: float = TIMEOUT_S, max_chars: int = MAX_OUTPUT_CHARS) -> None:
        self.timeout_s = timeout_s
        self.max_chars = max_chars
        self._lock = asyncio.Lock()
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None
        self.killed = 0  # workers killed for overrunning (metrics, tests)

    async def parse_and_validate(self, text: str, schema: dict[str, Any]) -> Any:
        """The parsed output, or ``SchemaValidationFailed`` saying why it is not acceptable."""
        if len(text) > self.max_chars:
            raise SchemaValidationFailed(f"the output is over {self.max_chars} characters; not checked")
        try:
            output = json.loads(text)
        except (ValueError, RecursionError):
            raise SchemaValidationFailed("the output is not valid JSON") from None
        async with self._lock:
            reason = await self._check(schema, output)
        if reason is not None:
            raise SchemaValidationFailed(reason)
        return output

    async def _check(self, schema: dict[str, Any], output: Any) -> str | None:
        try:
            conn = await self._ensure()
        except (TimeoutError, EOFError, OSError):
            self._kill()
            return "the output could not be checked (the checker did not start)"
        try:
            conn.send((schema, output))
            result = await _recv(conn, self.timeout_s)
        except (TimeoutError, EOFError, OSError):
            self.killed += 1
            self._kill()
            return f"checking the output against the schema took over {self.timeout_s:g} s"
        return result if isinstance(result, str) else None

    async def _ensure(self) -> Connection:
        if self._proc is None or not self._proc.is_alive() or self._conn is None:
            self._kill()
            ctx = multiprocessing.get_context("spawn")  # no copy of the server's loop, sockets or threads
            parent, child = ctx.Pipe()
            self._proc = ctx.Process(target=_serve, args=(child,), name="parley-schema-check", daemon=True)
            self._proc.start()
            child.close()
            self._conn = parent
            await _recv(parent, START_TIMEOUT_S)  # "ready": start-up is not charged to the first check
        assert self._conn is not None
        return self._conn

    def _kill(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        if self._proc is not None:
            with contextlib.suppress(Exception):
                self._proc.kill()
                self._proc.join(1)
        self._proc = self._conn = None

    async def aclose(self) -> None:
        self._kill()
