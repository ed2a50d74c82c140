"""Run an ASGI app in a real uvicorn server on 127.0.0.1 and a free port, in a thread of this
process, for tests that talk to it over HTTP as editors do."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

START_TIMEOUT = 30.0  # seconds; a server that never starts fails the test instead of hanging


@contextmanager
def running(app) -> Iterator[str]:
    """`with running(app) as url:` serves `app` at `url` (no trailing slash) until the block
    ends, then shuts the server down (its lifespan closes the app's backend)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT)
        sock.close()
