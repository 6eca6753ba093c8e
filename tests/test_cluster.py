"""Parley on a real three-node Redis Cluster: one slot per session, conversation and resume work."""

from __future__ import annotations

from parley.client import ParleyClient
from parley.sessions import keys

from .support import RedisCluster, live_server


def test_all_keys_of_a_session_share_one_hash_slot(redis_cluster: RedisCluster) -> None:
    """Every per-session key and channel hashes to the same cluster slot (the {session_id} tag)."""
    node = redis_cluster.nodes[0]
    for sid in ("s_1", "s_abcdef", "s_" + "9" * 32):
        names = [*keys.session_keys(sid), keys.events_channel(sid)]
        slots = {node.command("CLUSTER", "KEYSLOT", name).strip() for name in names}
        assert len(slots) == 1, (sid, slots)


async def test_conversation_resume_and_cancel_on_a_cluster(redis_cluster: RedisCluster) -> None:
    """A server on the cluster streams, resumes from 0 and cancels like on a single Redis."""
    redis_cluster.flush()
    settings = {"store": redis_cluster.url, "echo_tokens_per_second": 200.0, "echo_reply_tokens": 30}
    async with live_server(**settings) as srv:
        async with ParleyClient(srv.url) as c:
            first = await c.ask("on a cluster")
            assert first.finish_reason == "stop"
            cid = await c.send("cancel me on a cluster")
            await c.next_event("response.delta")
            await c.cancel()
            assert (await c.collect(cid)).finish_reason == "cancelled"
        async with ParleyClient(srv.url, session_id=c.session_id, resume_token=c.resume_token) as r:
            seqs = []
            while len(seqs) < c.last_seq:
                seqs.append((await r.next_event())["seq"])
            assert seqs == list(range(1, c.last_seq + 1))
