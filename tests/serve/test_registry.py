"""A model's slot and its queue, without a server: admission counts every request that will hold the model, so a
burst of streams reserved while the model is idle still meets the queue's bound, and every place is given back."""
import asyncio

import pytest

from firstepoch.serve.registry import Busy, Slot, compute_thread


@pytest.fixture
def slot():
    return Slot("m", queue_size=2, thread=compute_thread())


def test_a_burst_of_reservations_on_an_idle_model_meets_the_bound(slot):
    held = [slot.reserve() for _ in range(3)]  # one to hold the model, two to wait
    with pytest.raises(Busy):
        slot.reserve()
    assert slot.waiting == 3
    for reservation in held:
        reservation.cancel()
    assert slot.waiting == 0


def test_places_come_back_however_a_request_ends(slot):
    async def main():
        first, second, third = slot.reserve(), slot.reserve(), slot.reserve()
        async with first:
            assert slot.lock.locked() and slot.waiting == 2
            with pytest.raises(Busy):
                slot.reserve()
            waiter = asyncio.ensure_future(second.__aenter__())
            await asyncio.sleep(0)
            waiter.cancel()  # a client that left while queued
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert slot.waiting == 1
            third.cancel()  # a stream whose body never started
            third.cancel()  # twice is harmless
            assert slot.waiting == 0
        first.cancel()  # after use: nothing to give back
        assert slot.waiting == 0 and not slot.lock.locked()
        with pytest.raises(RuntimeError):
            async with first:  # a reservation is used once
                pass
        async with slot:  # the plain form: reserve and hold
            assert slot.waiting == 0 and slot.lock.locked()
        assert not slot.lock.locked()

    asyncio.run(main())


def test_waiters_take_the_model_in_arrival_order(slot):
    order = []

    async def request(i, reservation):
        async with reservation:
            order.append(i)
            await asyncio.sleep(0.01)

    async def main():
        reservations = [slot.reserve() for _ in range(3)]
        await asyncio.gather(*(request(i, r) for i, r in enumerate(reservations)))

    asyncio.run(main())
    assert order == [0, 1, 2] and slot.waiting == 0
