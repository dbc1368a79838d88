"""Expert-aware batching played forward on expected queue sizes, for ``belady-expected``'s sense of time.

Algorithm 1 (``serve.core.scheduler``) runs the largest queue, and the requests it runs come back with their
next token: to the same expert with the router's stay probability (about 0.74 on the demo trace), else to
another. A queue that just ran therefore comes back smaller, and under a sequence cap the queues take turns.
Projecting the current service order once (largest first, each queue once) misses those turns, and so does
guessing that every running request stays (the queue that just ran then looks largest again, which it rarely
is). The rollout follows the turns in expectation:

1. State: per expert queue, its real pending items in FIFO order (tokens, anchor, experts touched) and
   an expected number of forecast one-token items behind them (a float). The running batch's requests enter
   as forecasts: each adds go * P[c][y] to queue y (go: the chance it continues; c: its current expert, or
   its forecast context's row: a request whose current token is off its home expert mostly goes back there).
2. Each step forms one batch as Algorithm 1 does, on expected sizes: the queue with the most tokens (real plus
   expected, lowest id on ties) runs whole if it fits the tokens and slots left, else its longest fitting part
   (real items first), and the batch ends. Every item that runs comes back next step as forecasts spread by P.
3. Recorded: the first step at which each expert's real work runs (``known``), the steps at which each queue
   runs (``served``), and, when asked, the step at which each real item runs (``item_steps``).
4. Stop once every real item has run, or after ``max_steps`` steps.
5. Real items left then run after the last step in the order the scheduler's service order gives them
   (queues largest first by expected size, FIFO inside, cut at the tokens and slots limits).

The starvation bound is ignored (it forces 0.3-2% of the items in the closed-loop runs of docs/serving.md).
Pure Python, deterministic.
"""

import collections

_EMPTY = 1e-9  # expected sizes below this count as an empty queue


def expert_aware_rollout(pending, running, matrix, go: float, budget: int, slots: int, max_steps: int,
                         num_experts: int | None = None, item_steps: list | None = None):
    """Steps 1-4. ``pending``: real items as (queue expert, tokens, anchor, experts touched) in service order;
    ``running``: {anchor: requests of the running batch that may continue}; ``matrix``: the next token's
    distribution per anchor: the transition matrix P (anchors are experts), or ``Forecast.rows`` of
    ``serve.core.next_use`` (anchors are forecast contexts; its first ``num_experts`` rows are P, which the
    items that ran come back with). Returns (known, served); fills ``item_steps`` (a list) when given."""
    num_experts = len(matrix) if num_experts is None else num_experts
    experts = range(num_experts)
    # Equal neighbours in a queue (decodes: one token, anchored and touching the queue's own expert) form one
    # run [count, tokens, anchor, touched], so that a step costs a few operations per queue, not per item.
    real = [collections.deque() for _ in experts]
    real_tokens = [0] * num_experts
    for number, (queue, size, anchor, touched) in enumerate(pending):
        runs = real[queue]
        if runs and runs[-1][1] == size and runs[-1][2] == anchor and runs[-1][3] == touched:
            runs[-1][0] += 1
            runs[-1][4].append(number)
        else:
            runs.append([1, size, anchor, touched, [number]])
        real_tokens[queue] += size
    if item_steps is not None:
        item_steps[:] = [0] * len(pending)
    real_left = len(pending)
    extra = [0.0] * num_experts
    for current, count in running.items():
        weight = count * go
        extra = [x + weight * chance for x, chance in zip(extra, matrix[current])]
    known = {}
    served = [[] for _ in experts]
    for step in range(1, max_steps + 1):
        back = {}  # anchor -> items that ran at this step (a forecast item: its queue's expert, row P)
        tokens_left, slots_left = float(budget), float(slots)
        sizes = [t + x for t, x in zip(real_tokens, extra)]
        while tokens_left > _EMPTY and slots_left > _EMPTY:
            size = max(sizes)
            queue = sizes.index(size)  # first maximal: lowest id on ties
            if size <= _EMPTY:
                break
            sizes[queue] = -1.0  # runs at most once per step
            runs = real[queue]
            whole = size <= tokens_left and sum(run[0] for run in runs) + extra[queue] <= slots_left
            served[queue].append(step)
            while runs:
                run = runs[0]
                count, tokens, anchor, touched, numbers = run
                take = min(count, int(slots_left + _EMPTY), int((tokens_left + _EMPTY) // tokens))
                if take == 0:
                    break
                run[0] -= take
                if not run[0]:
                    runs.popleft()
                real_tokens[queue] -= take * tokens
                tokens_left -= take * tokens
                slots_left -= take
                real_left -= take
                for expert in touched:
                    if expert not in known:
                        known[expert] = step
                back[anchor] = back.get(anchor, 0.0) + take
                if item_steps is not None:
                    done = len(numbers) - count  # numbers of this run that ran at earlier steps
                    for number in numbers[done:done + take]:
                        item_steps[number] = step
                if take < count:
                    break
            if runs:
                break  # the head does not fit: the batch ends with a part of this queue
            take = min(extra[queue], slots_left, tokens_left)
            extra[queue] -= take
            tokens_left -= take
            slots_left -= take
            back[queue] = back.get(queue, 0.0) + take
            if not whole:
                break
        for anchor, count in back.items():
            weight = count * go
            extra = [x + weight * chance for x, chance in zip(extra, matrix[anchor])]
        if not real_left:
            return known, served
    _cut_rest(real, real_tokens, extra, budget, slots, max_steps + 1, known, served, item_steps)
    return known, served


def _cut_rest(real, real_tokens, extra, budget: int, slots: int, step: int, known, served,
              item_steps=None) -> None:
    """Step 5: the real items left after the last step, queues largest first (expected sizes), each cut into
    batches at the tokens and slots limits from ``step`` on, as the scheduler's service order would run them."""
    order = sorted(range(len(real)), key=lambda e: -(real_tokens[e] + extra[e]))
    tokens_left, slots_left = budget, slots
    for queue in order:
        for count, tokens, _, touched, numbers in real[queue]:
            for number in numbers[len(numbers) - count:]:
                if tokens > tokens_left or slots_left < 1:
                    step += 1
                    tokens_left, slots_left = budget, slots
                tokens_left -= tokens
                slots_left -= 1
                if not served[queue] or served[queue][-1] != step:
                    served[queue].append(step)
                for expert in touched:
                    if expert not in known:
                        known[expert] = step
                if item_steps is not None:
                    item_steps[number] = step
