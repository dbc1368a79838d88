"""Run the app under uvicorn: bind (a port in use is one clear error), serve, drain on SIGTERM, exit 0.

Drain: on SIGTERM (or Ctrl-C) uvicorn stops accepting connections and waits for the open ones, our streaming
responses among them, for at most ``grace_s`` seconds, then cancels what is left; meanwhile ``/health`` and new
requests answer 503. After a signal-caused shutdown uvicorn re-raises the signal through the handler that was
installed before it started; a no-op handler there makes a drained SIGTERM end the process with status 0.
"""

import contextlib
import signal
import socket
import sys
import threading
import time

from readme_jax.errors import ReadmeJaxError


def bind(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise ReadmeJaxError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def run(app, host: str, port: int, grace_s: float = 30.0, log_level: str = "warning") -> int:
    import uvicorn

    sock = bind(host, port)
    state = app.state.server

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            state.draining = True
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=grace_s, lifespan="on",
                            access_log=log_level == "debug")
    bound_host, bound_port = sock.getsockname()[:2]
    print(f"readme-jax serve: {state.model_name} on http://{bound_host}:{bound_port} (SIGTERM drains)", flush=True)
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        Server(config).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    if state.loop.failure:
        print(f"error: the engine loop failed: {state.loop.failure}", file=sys.stderr)
        return 1
    return 0


@contextlib.contextmanager
def in_thread(app, host: str = "127.0.0.1", port: int = 0, startup_s: float = 60.0):
    """Serve ``app`` with uvicorn in a thread of this process, on loopback by default; yields its base URL once
    ``/health`` answers 200, and shuts it down on exit (benchmarks and tests that drive one engine both ways)."""
    import httpx
    import uvicorn

    sock = bind(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://{host}:{sock.getsockname()[1]}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ReadmeJaxError(f"the server on {url} did not come up within {startup_s:g} s")
            time.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
