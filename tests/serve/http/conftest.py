"""A live uvicorn server on loopback, in a thread of the test process (one engine thread per server)."""

import contextlib
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed (make setup)")


@contextlib.contextmanager
def live_server(engine, **config):
    import httpx
    import uvicorn

    from serve.http.app import ServerConfig, create_app
    from serve.http.server import bind

    app = create_app(engine, ServerConfig(**config))
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the test server did not come up")
        time.sleep(0.02)
    try:
        yield url, app.state.server
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def small_engine(**kw):
    from tests.serve.http.fake_engine import FakeEngine

    return FakeEngine(**kw)


class StreamTally:
    """Counts an SSE stream's token chunks as its lines arrive: ``feed`` returns True on a token chunk."""

    def __init__(self):
        self.chunks, self.usage, self.finish, self.done = 0, None, None, False

    def feed(self, line: str) -> bool:
        import json

        if not line.startswith("data: ") or self.done:
            return False
        if line == "data: [DONE]":
            self.done = True
            return False
        chunk = json.loads(line[6:])
        if not chunk["choices"]:
            self.usage = chunk["usage"]
            return False
        self.chunks += 1
        self.finish = chunk["choices"][0]["finish_reason"] or self.finish
        return True
