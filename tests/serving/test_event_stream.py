"""A streamed answer gives back its place among the key's requests in flight however it ends,
also when the client leaves before the first event: called as uvicorn calls it (ASGI 2.3, the
disconnect already waiting), the events never start, and the place must still come back."""

from __future__ import annotations

import asyncio

from zen_coder.serving.app import EventStream


def test_a_client_gone_before_the_first_event_still_releases_its_place():
    """Checked by hand: with the release in the events' own `finally` (as before), it never
    ran here and the key stayed at its limit."""
    released, started = [], []

    async def events():
        started.append(True)
        yield "data: {}\n\n"

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        await asyncio.sleep(0)

    response = EventStream(events(), lambda: released.append(True))
    scope = {"type": "http", "asgi": {"spec_version": "2.3"}}
    asyncio.run(response(scope, receive, send))
    assert released == [True]
    assert started == []
