"""A real `parley serve` process on the Redis store: a restart loses nothing."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from parley.client import ParleyClient

from .support import RedisServer, ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def proc(redis_url: str) -> Iterator[ServerProcess]:
    p = ServerProcess(
        {
            "PARLEY_STORE": redis_url,
            "PARLEY_ECHO_TOKENS_PER_SECOND": "40",
            "PARLEY_ECHO_REPLY_TOKENS": "40",
            "PARLEY_DRAIN_TIMEOUT_MS": "0",
        }
    )
    p.start()
    yield p
    p.stop(signal.SIGKILL)


async def test_resume_against_a_restarted_process_gets_the_whole_log(proc: ServerProcess) -> None:
    """After SIGTERM mid-response and a restart on the same port, resume from 0 and from last_seq work."""
    c = ParleyClient(proc.url, auto_resume=False)
    await c.connect()
    await c.ask("before restart")
    cid = await c.send("during restart")
    for _ in range(5):
        await c.next_event("response.delta")
    seen_before = c.last_seq
    assert proc.stop(signal.SIGTERM) in (
        0,
        -signal.SIGTERM,
    )  # graceful (uvicorn re-raises the signal): sockets get 1012, the running response is interrupted
    proc.start()
    # resume from last_seq: the missed events, ending with the interrupted terminal
    c2 = ParleyClient(proc.url, session_id=c.session_id, resume_token=c.resume_token, last_seq=seen_before)
    await c2.connect()
    c2.message_ids, c2.response_of, c2.texts = c.message_ids, c.response_of, c.texts
    reply = await c2.collect(cid)
    assert reply.finish_reason == "interrupted"
    assert reply.completed["error"]["code"] == "upstream_unavailable"
    assert reply.completed["error"]["retryable"] is True
    # resume from 0: the whole log, contiguous, and the session works on the new process
    c3 = ParleyClient(proc.url, session_id=c.session_id, resume_token=c.resume_token, last_seq=0)
    await c3.connect()
    seqs = []
    while len(seqs) < c2.last_seq:
        seqs.append((await c3.next_event())["seq"])
    assert seqs == list(range(1, c2.last_seq + 1))
    hist = [e for e in c3.texts.values()]
    assert len(hist) == 2
    after = await c3.ask("after restart")
    assert after.finish_reason == "stop" and "(earlier: before restart )" in after.text
    for client in (c, c2, c3):
        await client.close()


async def test_sigterm_closes_client_sockets_with_1012(proc: ServerProcess) -> None:
    """A graceful shutdown closes open sessions with 1012 so clients resume elsewhere."""
    c = ParleyClient(proc.url, auto_resume=False)
    await c.connect()
    await c.send("long reply")
    await c.next_event("response.delta")
    proc.stop(signal.SIGTERM)
    with pytest.raises(Exception) as info:
        while True:
            await c.next_event()
    assert getattr(info.value, "code", None) == 1012


def test_redis_server_fixture_is_not_the_system_one(redis_server: RedisServer) -> None:
    """Tests use their own redis-server on a free port, never the machine's 6379."""
    assert redis_server.port != 6379
