"""The turn pacer: at most N turn starts per event-loop iteration, first come first served."""

from __future__ import annotations

import asyncio

from parley.server.core.pacer import TurnPacer


async def _run(pacer: TurnPacer, n: int) -> list[tuple[int, int]]:
    """Start ``n`` waiters at once; return (waiter, loop iteration it got its slot in)."""
    tick = 0
    got: list[tuple[int, int]] = []

    async def counter() -> None:
        nonlocal tick
        while True:
            await asyncio.sleep(0)
            tick += 1

    async def waiter(i: int) -> None:
        await pacer.slot()
        got.append((i, tick))

    ticking = asyncio.create_task(counter())
    await asyncio.wait_for(asyncio.gather(*(waiter(i) for i in range(n))), 5)
    ticking.cancel()
    return got


async def test_at_most_per_tick_turns_start_in_one_iteration_in_arrival_order() -> None:
    """Ten waiters with three slots per iteration start three by three, in the order they asked."""
    got = await _run(TurnPacer(3), 10)
    assert [i for i, _ in got] == list(range(10))
    per_tick: dict[int, int] = {}
    for _, t in got:
        per_tick[t] = per_tick.get(t, 0) + 1
    assert max(per_tick.values()) <= 3
    assert len(per_tick) >= 4


async def test_zero_means_no_pacing() -> None:
    """With per_tick 0 every turn starts at once, in the same iteration."""
    got = await _run(TurnPacer(0), 10)
    assert len({t for _, t in got}) == 1


async def test_a_cancelled_waiter_gives_its_slot_to_the_next() -> None:
    """A waiter cancelled while it waits is skipped; everyone behind it still gets a slot."""
    pacer = TurnPacer(1)
    tasks = [asyncio.create_task(pacer.slot()) for _ in range(3)]
    await asyncio.sleep(0)  # the first took this iteration's only slot; the other two wait
    assert tasks[0].done() and not tasks[1].done()
    tasks[1].cancel()
    await asyncio.wait_for(tasks[2], 5)
    assert tasks[1].cancelled() and tasks[2].done()
