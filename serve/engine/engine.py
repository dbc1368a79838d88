"""The serving engine: the host scheduler drives the real JAX model over a few device expert slots.

One iteration (``Engine.step``) mirrors ``serve.sim.simulate``'s, so the two can be compared batch for batch:

1. Carry: requests that emitted a token (or finished a prefill chunk) re-enter the scheduler, in batch order.
2. Admit: waiting requests take a free KV row; the router pre-gates their prompts (one batched call) and they
   join the scheduler, their prompts chunked so that each chunk touches at most C experts.
3. Schedule: ``Scheduler.next_batch`` (expert-aware, decode-first, prefill-first or fcfs; sequence cap, expert
   cap C, starvation bound).
4. Cache: ``ExpertCache.access_batch`` over the batch's experts with Belady's lookahead over the pending,
   pre-gated work, protecting the batch's experts; the slot store loads the misses (``serve.engine.store``) and
   the engine waits for them (the exposed stall).
5. Run: one program call for the batch's prefill chunks and one for its decodes (``serve.engine.programs``),
   each sampling its rows' next tokens and pre-gating them with the router.
6. Prefetch (``prefetch="next"``): while the step runs, the predicted next batch's missing experts are loaded.
7. Emit: every request gets its token; finished requests free their row; the others reveal their next expert.

The engine is not thread-safe: one thread calls ``submit``/``abort``/``step`` (``serve.http.loop`` does).
"""

import dataclasses
import time

import jax
import numpy as np

from readme_jax.errors import ReadmeJaxError
from readme_jax.generate import SamplingParams
from serve.core.cache_policies import LOOKAHEAD_POLICIES
from serve.core.expert_cache import CacheCounters
from serve.core.lookahead import ExpectedLookahead, QueueLookahead
from serve.core.prefetch import plan_prefetch, predict_next_experts
from serve.core.types import Request, RequestSpec, RequestState, ServeError
from serve.engine import inputs
from serve.engine.build import build
from serve.engine.config import EngineConfig
from serve.engine.requests import EngineRecord, LiveRequest, Sequence, TokenEvent


class Engine:
    """Continuous batching over pre-gated requests with C device expert slots (module docstring)."""

    @classmethod
    def load(cls, model: str = "default", slots: int | None = None, cache_policy: str = "belady",
             batching: str = "expert-aware", max_seqs: int = 16, prefetch: str = "next", seed: int = 0,
             dtype: str = "float32", **config) -> "Engine":
        """An engine over ``model`` (``readme_jax.load``'s spec: "default", a .gguf, an HF folder or a Read-ME MoE
        folder). The settings are checked before the model is read."""
        settings = EngineConfig(slots=slots, cache_policy=cache_policy, batching=batching, max_seqs=max_seqs,
                                prefetch=prefetch, seed=seed, **config)
        import readme_jax

        return cls(readme_jax.load(model, dtype=dtype), settings, name=str(model))

    def __init__(self, lm, config: EngineConfig = EngineConfig(), name: str | None = None):
        self.config = config
        self.model_name = name or lm.source or "model"
        parts = build(lm, config)
        self.tokenizer, self.cfg, self.eos_ids = lm.tokenizer, lm.cfg, frozenset(lm.eos_ids)
        self.num_experts, self.slots, self.context = parts.num_experts, parts.slots, parts.context
        self.store, self.cache, self.scheduler, self.programs = parts.store, parts.cache, parts.scheduler, parts.programs
        self._leaves, self._router_leaves = parts.leaves, parts.router_leaves
        self._cache_kv, self._router_kv = parts.cache_kv, parts.router_kv
        self._next_use = parts.next_use
        self._free_rows = list(range(config.max_seqs))
        self._waiting: list[Sequence] = []
        self._live: dict[str, Sequence] = {}
        self._by_request: dict[int, Sequence] = {}
        self._carry: list[Request] = []
        self._events: list[TokenEvent] = []
        self._issued = 0
        self.iteration = 0
        self.t0 = time.perf_counter()
        self.record = EngineRecord()
        self._admitted = 0  # prompts admitted since the last batch (their router calls fall in its duration)
        self.totals = {"stall_s": 0.0, "host_s": 0.0, "device_s": 0.0, "tokens": 0, "finished": 0, "aborted": 0,
                       "failed": 0}

    def reset(self, **changes) -> None:
        """Start afresh with new policy settings (``EngineConfig`` fields that do not change shapes: the cache
        policy, batching, prefetch, token budget, starvation bound, lookahead, seed), keeping the compiled
        programs: every slot is emptied, the counters and the record start from zero. The engine must be idle."""
        if self.has_work():
            raise ServeError("reset needs an idle engine (requests are still live)")
        fixed = ("slots", "max_seqs", "max_context")
        if any(k in changes and changes[k] != getattr(self.config, k) for k in fixed):
            raise ServeError(f"reset cannot change {', '.join(fixed)} (they set the programs' shapes); load a new "
                             "engine")
        config = dataclasses.replace(self.config, **changes)
        config.check_slots(self.num_experts)
        from serve.engine.build import policy_parts

        # Built before anything is replaced: a bad setting leaves the engine as it was.
        parts = policy_parts(config, self.num_experts, self.slots, self.store)
        self.config = config
        self.scheduler, self.cache, self._next_use = parts
        if self.store is not None:
            self.store.reset()
        self.iteration = 0
        self._issued = 0
        self.reset_record()

    def reset_record(self) -> None:
        """A new record and clock (``serve.engine.replay`` calls it at the start of a run)."""
        self.t0 = time.perf_counter()
        self.record = EngineRecord()
        self._admitted = 0  # prompts admitted since the last batch (their router calls fall in its duration)
        self.totals = {key: 0 if isinstance(value, int) else 0.0 for key, value in self.totals.items()}

    # ---- requests -------------------------------------------------------------------------------------------
    def now(self) -> float:
        return time.perf_counter() - self.t0

    def submit(self, prompt_ids, params: SamplingParams | None = None, request_id: str | None = None,
               arrival_s: float | None = None, forced: RequestSpec | None = None, index: int | None = None) -> str:
        """Queue a request (token ids); returns its id. Bad input raises before anything is queued."""
        params = params or SamplingParams()
        prompt = [int(t) for t in prompt_ids]
        request_id = request_id if request_id is not None else f"req-{self._issued}"
        if request_id in self._live:
            raise ServeError(f"request id {request_id!r} is already live")
        if not prompt:
            raise ServeError(f"request {request_id!r}: empty prompt (at least one token is needed)")
        if min(prompt) < 0 or max(prompt) >= self.cfg.vocab_size:
            raise ServeError(f"request {request_id!r}: token ids outside [0, {self.cfg.vocab_size})")
        if len(prompt) + params.max_new_tokens > self.context:
            raise ServeError(f"request {request_id!r}: a prompt of {len(prompt)} tokens plus max_new_tokens="
                             f"{params.max_new_tokens} exceeds the engine's context of {self.context} tokens")
        if forced is not None:
            inputs.check_forced(forced, prompt, self.num_experts)
        seq = Sequence(request_id, prompt, params, self.now() if arrival_s is None else arrival_s,
                       self._issued if index is None else index, forced)
        self._issued += 1
        self._live[request_id] = seq
        self._waiting.append(seq)
        return request_id

    def abort(self, request_id: str) -> bool:
        """End a request now; everything it held (its row, its queued work) is freed. False if unknown."""
        seq = self._live.get(request_id)
        if seq is None:
            return False
        if seq in self._waiting:
            self._waiting.remove(seq)
        request = seq.request
        if request is not None:
            if request in self._carry:
                self._carry.remove(request)
            else:
                self.scheduler.cancel(request)
        self._release(seq, "abort")
        self.totals["aborted"] += 1
        self._events.append(TokenEvent(request_id, None, True, "abort"))
        return True

    def has_work(self) -> bool:
        return bool(self._live or self._events)

    def num_waiting(self) -> int:
        return len(self._waiting)

    def num_running(self) -> int:
        return len(self._live) - len(self._waiting)

    def _release(self, seq: Sequence, reason: str) -> None:
        seq.finish_reason = reason
        self._live.pop(seq.request_id, None)
        if seq.request is not None:
            self._by_request.pop(id(seq.request), None)
        if seq.row >= 0:
            self._free_rows.append(seq.row)
            self._free_rows.sort()
            seq.row = -1

    # ---- one iteration --------------------------------------------------------------------------------------
    def step(self) -> list[TokenEvent]:
        """Run one iteration (module docstring); returns the token events it produced."""
        events, self._events = self._events, []
        start = self.now()
        self._resubmit()
        self._admitted += self._admit(events)
        if not len(self.scheduler):
            return events
        batch = self.scheduler.next_batch(self.iteration)
        if not batch.requests:
            raise RuntimeError(f"iteration {self.iteration}: empty batch with {len(self.scheduler)} items pending")
        prefill_tokens = sum(r.work_tokens for r in batch.requests if r.state is RequestState.PREFILL)  # before emit
        stall, view = self._cache_access(batch)
        dispatched = [(group, self._run(group)) for group in inputs.groups(batch)]
        self._prefetch(batch, view)
        wait0 = time.perf_counter()
        results = [(group, np.asarray(tok), np.asarray(exp)) for group, (tok, exp) in dispatched]
        device_s = time.perf_counter() - wait0
        end = self.now()
        self._emit(batch, results, end, events)
        duration = end - start
        rec = self.record
        rec.batch_start_s.append(start)
        rec.batch_duration_s.append(duration)
        rec.batch_tokens.append(batch.num_tokens)
        rec.batch_experts.append(len(batch.experts))
        rec.batch_prefill.append(batch.num_prefill)
        rec.batch_prefill_tokens.append(prefill_tokens)
        rec.batch_admitted.append(self._admitted)
        self._admitted = 0
        rec.batch_stall_s.append(stall)
        rec.batch_host_s.append(max(0.0, duration - stall - device_s))
        rec.batch_requests.append(tuple(r.spec.request_id for r in batch.requests))
        self.totals["stall_s"] += stall
        self.totals["device_s"] += device_s
        self.totals["host_s"] += rec.batch_host_s[-1]
        self.iteration += 1
        return events

    def _resubmit(self) -> None:
        carry, self._carry = self._carry, []
        if any(r.state is RequestState.QUEUED for r in carry):  # a next prefill chunk: checked submit
            for request in carry:
                if request.state is RequestState.QUEUED:
                    self.scheduler.submit(request, self.iteration)
                else:
                    self.scheduler.submit_decodes((request,), self.iteration)
        else:
            self.scheduler.submit_decodes(carry, self.iteration)

    def _admit(self, events: list) -> int:
        """Admit waiting requests into free rows, pre-gating their prompts; returns how many were admitted."""
        admitted = []
        while self._waiting and self._free_rows:
            seq = self._waiting.pop(0)
            seq.row = self._free_rows.pop(0)
            admitted.append(seq)
        if not admitted:
            return 0
        experts = {}
        if self._router_leaves is not None:
            for seq in admitted:  # one prompt per call: its shape is then one of a few token buckets
                if seq.forced is None:
                    arrays = inputs.route_inputs([seq], self.context, self.config.max_seqs)
                    out, self._router_kv = self.programs.route(self._router_leaves, self._router_kv, *arrays[:-1],
                                                               window=arrays[-1])
                    experts[seq.request_id] = tuple(int(e) for e in np.asarray(out)[0, :len(seq.prompt)])
        for seq in admitted:
            try:
                self._enter(seq, experts.get(seq.request_id))
            except ReadmeJaxError as exc:  # one bad request never takes the engine down
                self._release(seq, "error")
                self.totals["failed"] += 1
                events.append(TokenEvent(seq.request_id, None, True, "error", error=str(exc)))
        return len(admitted)

    def _enter(self, seq: Sequence, prompt_experts) -> None:
        if seq.forced is not None:
            spec = seq.forced
            request = Request(spec, seq.index, self.scheduler.config.chunks(spec))
        else:
            prompt_experts = prompt_experts or (0,) * len(seq.prompt)
            spec = RequestSpec(seq.request_id, seq.arrival_s, prompt_experts, (), seq.params.max_new_tokens,
                               prompt_ids=tuple(seq.prompt), live=True)
            request = LiveRequest(spec, seq.index, self.scheduler.config.chunks(spec))
        request.ready_s = seq.arrival_s
        seq.request = request
        self._by_request[id(request)] = seq
        self.scheduler.submit(request, self.iteration)

    def _lookahead(self, batch, keys):
        wants = self.cache is not None and (self.config.cache_policy in LOOKAHEAD_POLICIES
                                            or self.config.prefetch == "next")
        if self._next_use is not None:
            self._next_use.observe(batch)
            return ExpectedLookahead(keys, self.scheduler, self.num_experts, 1, self.config.lookahead_items, batch,
                                     self._next_use)
        if wants:
            return QueueLookahead(keys, self.scheduler, self.num_experts, 1, self.config.lookahead_items)
        return None

    def _cache_access(self, batch):
        if self.cache is None:
            return 0.0, None
        keys = batch.experts
        view = self._lookahead(batch, keys)
        self.store.iteration = self.iteration
        if view is not None:
            view.move_to(len(keys) - 1)
            self.cache.access_batch(keys, view, frozenset(keys))
        else:
            self.cache.access_batch(keys, protect=frozenset(keys))
        self.store.flush()
        return self.store.wait(keys), view

    def _prefetch(self, batch, view) -> None:
        if self.cache is None or self.config.prefetch != "next":
            return
        limits = self.scheduler.config
        predicted = predict_next_experts(self.scheduler.service_order(), limits.max_batch_tokens,
                                         limits.max_batch_requests, limits.max_batch_experts)
        protect = frozenset(batch.experts)
        for key in plan_prefetch(predicted, self.cache.resident):
            self.cache.prefetch(key, view, protect)
        self.store.flush()  # asynchronous copies: they overlap the running step where the device allows

    def _run(self, group):
        seqs = [self._by_request[id(r)] for r in group.requests]
        arrays, window, sampled = inputs.step_inputs(group, seqs, self.context, self.config.max_seqs)
        tok, exp, self._cache_kv, self._router_kv = self.programs.step(
            self._leaves, self._router_leaves, self._cache_kv, self._router_kv, *arrays, window=window,
            sampled=sampled)
        return tok, exp

    def _emit(self, batch, results, end: float, events: list) -> None:
        sampled = {}
        for group, tok, exp in results:
            for b, request in enumerate(group.requests):
                sampled[id(request)] = (int(tok[b]), int(exp[b]))
        for request in batch.requests:  # in batch order, as the simulator re-submits them
            seq = self._by_request[id(request)]
            if request.state is RequestState.PREFILL and not request.last_chunk:
                request.next_chunk()
                self._carry.append(request)
                continue
            request.generated += 1
            token, expert = sampled[id(request)]
            if seq.forced is not None:
                token = seq.forced.output_ids[request.generated - 1]
                expert = seq.forced.output_experts[request.generated - 1]
            else:
                request.experts_out.append(expert)
            seq.out.append(token)
            self.totals["tokens"] += 1
            if request.state is RequestState.PREFILL:
                request.first_token_s = end
                request.state = RequestState.DECODE
            reason = None
            if request.generated >= request.num_output:
                reason = "length"
            elif seq.forced is None and token in self.eos_ids:
                reason = "stop"
            if reason is None:
                request.reveal_next_expert()
                self._carry.append(request)
                events.append(TokenEvent(seq.request_id, token, False, expert=expert))
                continue
            request.state = RequestState.FINISHED
            request.finish_s = end
            if seq.forced is None:
                request.spec = inputs.finished_spec(request, seq)
            self._release(seq, reason)
            self.totals["finished"] += 1
            self.record.requests.append(request)
            events.append(TokenEvent(seq.request_id, token, True, reason, expert=expert))

    # ---- convenience and reporting --------------------------------------------------------------------------
    def run_until_done(self, on_event=None) -> None:
        while self.has_work():
            for event in self.step():
                if on_event is not None:
                    on_event(event)

    def generate_ids(self, prompts, params: SamplingParams | None = None) -> list[list[int]]:
        """Generated ids per prompt (EOS included when reached), every prompt served concurrently."""
        ids = [self.submit(p, params) for p in prompts]
        outputs = {i: [] for i in ids}
        errors = {}

        def collect(event):
            if event.request_id in outputs:
                if event.token_id is not None:
                    outputs[event.request_id].append(event.token_id)
                if event.error:
                    errors[event.request_id] = event.error

        self.run_until_done(collect)
        if errors:
            raise ServeError("; ".join(f"{rid}: {msg}" for rid, msg in errors.items()))
        return [outputs[i] for i in ids]

    def generate(self, prompts, max_new_tokens: int = 32, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int = 0, chat: bool = False) -> list[str]:
        """Continuation texts of ``prompts`` (a list of str); greedy by default, EOS stripped as in
        ``lm.generate``."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ServeError("Engine.generate takes a list of prompt strings")
        params = SamplingParams(max_new_tokens, temperature, top_k, top_p, seed)
        tok = self.tokenizer
        encoded = [tok.encode(tok.apply_chat(p) if chat else p, add_special_tokens=True) for p in prompts]
        out = self.generate_ids(encoded, params)
        return [tok.decode([t for t in seq if t not in self.eos_ids]) for seq in out]

    def stats(self) -> dict:
        counters = self.cache.counters if self.cache is not None else CacheCounters()
        out = counters.as_dict()
        if self.cache is None:
            out["hit_ratio"] = 1.0  # a dense model: its one MLP is always resident
        store = self.store
        out.update(self.totals)
        out.update(iterations=self.iteration, slots=self.slots, num_experts=self.num_experts,
                   compiles=self.programs.compiles, running=self.num_running(), waiting=self.num_waiting(),
                   bytes_copied=store.bytes_copied if store else 0, expert_bytes=store.expert_bytes if store else 0,
                   prefetch_pending=self.cache.prefetch_pending if self.cache is not None else 0)
        return out

    def slot_table(self) -> dict:
        """Which expert each device slot holds (-1: free) and the resident experts."""
        if self.store is None:
            return {"slots": [0], "resident": [0], "num_experts": 1}
        return {"slots": [int(e) for e in self.store.expert_of_slot], "resident": sorted(self.store.resident()),
                "num_experts": self.num_experts}

    def device_table(self) -> np.ndarray:
        """The slot table the next step reads (the device copy): int32[E], -1 = not resident."""
        return np.asarray(jax.device_get(self._leaves[self.store.table_leaf]))
