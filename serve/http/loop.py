"""The engine thread: the only code that touches the ``Engine`` (which is not thread-safe).

Handlers (asyncio) hand it a ``Ticket`` through a locked inbox and read messages back from the ticket's
``asyncio.Queue``; the thread delivers with ``loop.call_soon_threadsafe``. Messages: ``("accepted", None)`` once
``Engine.submit`` took the request, ``("error", message)`` if it refused it, then ``("tokens", [TokenEvent...])``
after each iteration that produced some for it.

Admission (back-pressure): the inbox plus the engine's waiting queue never hold more than ``max_waiting``
requests. The handler checks ``inbox + waiting`` under the lock; only this thread shrinks the inbox or changes the
engine's waiting count, and it republishes that count under the same lock after every iteration, so the bound
holds at every instant, not just on average. Beyond it the handler answers 429.
"""

import dataclasses
import logging
import threading
import time

from readme_jax.errors import ReadmeJaxError

log = logging.getLogger("readme_jax.serve.http")


class QueueFull(Exception):
    pass


@dataclasses.dataclass(eq=False)
class Ticket:
    request_id: str
    prompt_ids: list
    params: object  # readme_jax.generate.SamplingParams
    loop: object  # the handler's asyncio loop
    queue: object  # asyncio.Queue, read by the handler
    arrival_s: float
    accepted_s: float | None = None
    last_token_s: float | None = None
    tokens: int = 0
    cancelled: bool = False
    end_reason: str | None = None  # set when the handler ends it ("stop": a stop string; "abort": disconnect)


class EngineLoop:
    def __init__(self, engine, max_waiting: int, metrics=None, idle_wait_s: float = 0.02):
        if max_waiting < 1:
            raise ReadmeJaxError(f"max_waiting={max_waiting} must be >= 1")
        self.engine, self.max_waiting, self.metrics, self.idle_wait_s = engine, max_waiting, metrics, idle_wait_s
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._inbox: list[Ticket] = []
        self._aborts: list[str] = []
        self._waiting = 0  # the engine's waiting count, published under _lock
        self._live: dict[str, Ticket] = {}  # engine thread only
        self.max_waiting_seen = 0
        self.aborted = 0
        self.failure: str | None = None
        self._snapshot = {"stats": {}, "running": 0, "waiting": 0, "slot_table": None}
        self._thread = threading.Thread(target=self._run, name="readme-jax-engine", daemon=True)

    # ---- called from the asyncio side -------------------------------------------------------------------------
    def start(self):
        self._snapshot = self._take_snapshot()
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.failure is None and not self._stop.is_set()

    def submit(self, ticket: Ticket) -> None:
        with self._lock:
            if len(self._inbox) + self._waiting >= self.max_waiting:
                raise QueueFull(f"the waiting queue is full ({self.max_waiting} requests)")
            self._inbox.append(ticket)
            self.max_waiting_seen = max(self.max_waiting_seen, len(self._inbox) + self._waiting)
        self._wake.set()

    def abort(self, request_id: str, reason: str = "abort") -> None:
        """End a request early: ``reason`` "stop" (a stop string matched) counts as a success, "abort" does not."""
        with self._lock:
            self._aborts.append((request_id, reason))
        self._wake.set()

    def snapshot(self) -> dict:
        snap = dict(self._snapshot)
        snap.update(max_waiting=self.max_waiting, max_waiting_seen=self.max_waiting_seen, aborted=self.aborted,
                    alive=self.alive)
        return snap

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- the engine thread ------------------------------------------------------------------------------------
    def _run(self):
        try:
            while not self._stop.is_set():
                self._admit()
                if self.engine.has_work():
                    self._deliver(self.engine.step())
                    self._publish()
                else:
                    self._wake.wait(self.idle_wait_s)
                    self._wake.clear()
        except Exception as exc:  # the engine broke: fail every request, report it on /health
            log.exception("engine loop failed")
            self.failure = f"{type(exc).__name__}: {exc}"
            for ticket in list(self._live.values()):
                self._send(ticket, "fatal", self.failure)
            self._live.clear()
        finally:
            self._shutdown()

    def _admit(self):
        with self._lock:
            inbox, self._inbox = self._inbox, []
            aborts, self._aborts = self._aborts, []
        gone = {request_id for request_id, _ in aborts}
        for ticket in inbox:
            if ticket.request_id in gone:
                continue  # gone before it reached the engine
            try:
                self.engine.submit(ticket.prompt_ids, ticket.params, request_id=ticket.request_id)
            except ReadmeJaxError as exc:
                self._send(ticket, "error", str(exc))
                continue
            ticket.accepted_s = time.monotonic()
            self._live[ticket.request_id] = ticket
            if self.metrics:
                self.metrics.queue.observe(ticket.accepted_s - ticket.arrival_s)
                self.metrics.prompt_tokens.inc(len(ticket.prompt_ids))
            self._send(ticket, "accepted", None)
        for request_id, reason in aborts:
            ticket = self._live.get(request_id)
            if ticket is not None and not ticket.cancelled:
                ticket.cancelled, ticket.end_reason = True, reason
                self.engine.abort(request_id)
        if inbox or aborts:
            self._publish()

    def _deliver(self, events):
        now = time.monotonic()
        by_ticket: dict[str, list] = {}
        for event in events:
            ticket = self._live.get(event.request_id)
            if ticket is None:
                continue
            if event.token_id is not None and not ticket.cancelled:
                self._count_token(ticket, now)
            if event.finished:
                del self._live[event.request_id]
                self._finish(ticket, event, now)
            by_ticket.setdefault(event.request_id, [ticket]).append(event)
        for ticket, *batch in by_ticket.values():
            if not ticket.cancelled:
                self._send(ticket, "tokens", batch)

    def _count_token(self, ticket, now):
        m = self.metrics
        if m:
            m.generation_tokens.inc()
            if ticket.last_token_s is None:
                m.ttft.observe(now - ticket.arrival_s)
            else:
                m.itl.observe(now - ticket.last_token_s)
        ticket.last_token_s = now
        ticket.tokens += 1

    def _finish(self, ticket, event, now):
        reason = ticket.end_reason if ticket.cancelled else event.finish_reason
        if reason == "abort":
            self.aborted += 1
            return
        if self.metrics:
            end = ticket.last_token_s or now
            self.metrics.e2e.observe(end - ticket.arrival_s)
            self.metrics.success.labels(self.metrics.model_name, reason or "unknown").inc()

    def _publish(self):
        snap = self._take_snapshot()
        with self._lock:
            self._waiting = snap["waiting"]
            self.max_waiting_seen = max(self.max_waiting_seen, len(self._inbox) + self._waiting)
        self._snapshot = snap

    def _take_snapshot(self) -> dict:
        eng = self.engine
        return {"stats": dict(eng.stats()), "running": eng.num_running(), "waiting": eng.num_waiting(),
                "slot_table": eng.slot_table(), "live": len(self._live)}

    def _send(self, ticket, kind, payload):
        try:
            ticket.loop.call_soon_threadsafe(ticket.queue.put_nowait, (kind, payload))
        except RuntimeError:  # the handler's loop is closed (server shutting down): nobody is listening
            pass

    def _shutdown(self):
        with self._lock:
            inbox, self._inbox = self._inbox, []
        for ticket in inbox + list(self._live.values()):
            self._send(ticket, "fatal", "the server is shutting down")
        for request_id in list(self._live):
            try:
                self.engine.abort(request_id)
            except Exception:  # best effort on the way out
                pass
        self._live.clear()
