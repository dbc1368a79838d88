"""Cost model of one iteration: compute time from the batch's shape, transfer time from missing expert slices.

1. Compute time of a batch (all N layers):
       compute_s = step_overhead_s + token_s * decode_tokens + prefill_token_s * prefill_tokens
                   + call_s * program_calls + expert_s * num_distinct_experts + admit_s * admitted_prompts
   Per-token latency rising linearly with the distinct experts in a batch is what the paper measures (Fig. 3b);
   ``expert_s`` is the time to stream one expert's weights once per step. Each layer takes compute_s / N.
   The paper's model has one kind of token and no per-call cost (``prefill_token_s`` defaults to ``token_s``,
   ``call_s`` and ``admit_s`` to 0). The real engine runs each prefill chunk as its own program call and the
   decodes as one more (``program_calls`` = prefill items + 1 if there are decodes), and pre-gates each admitted
   prompt with one router call: the terms a fit to its iterations needs (``serve.engine.bench.calibrate``).
2. Transfer time of one expert slice (one expert, one layer) = slice_bytes / link_bytes_per_s; the link moves
   one slice at a time.
3. Layer timeline. Layer l must have its missing slices loaded before it computes. With layer-ahead prefetch
   (``pipelined=True``, paper section 6.3) the load of layer l starts once layer l-1 starts computing, so only
   the first layer's loads are exposed when transfers are shorter than a layer's compute. Without it
   (on-demand loading) the load of layer l starts only after layer l-1 has finished.
   ``link_ready_s`` delays every load by a backlog left on the link (speculative prefetches of the previous
   iteration).

The constants are parameters. ``llama2_7b_a100()`` derives them from spec-sheet numbers for the paper's setting
(docs/serving.md shows the arithmetic); they are to be calibrated on the real engine.
"""

import dataclasses

from serve.core.types import ServeError


@dataclasses.dataclass(frozen=True, slots=True)
class CostModel:
    """Per-iteration cost constants (seconds and bytes).

    Attributes:
      num_layers: N, decoder layers.
      step_overhead_s: time of an iteration that is independent of its tokens and experts.
      token_s: time per token in the batch.
      expert_s: time per distinct expert in the batch (all layers).
      slice_bytes: bytes of one expert's weights in one layer.
      link_bytes_per_s: host-to-device bandwidth.
      prefill_token_s: time per prefill token (None: ``token_s``).
      call_s: time per program call (each prefill item, and the decodes together).
      admit_s: time per prompt admitted at this iteration (its pre-gating router call).
    """

    num_layers: int
    step_overhead_s: float
    token_s: float
    expert_s: float
    slice_bytes: int
    link_bytes_per_s: float
    prefill_token_s: float | None = None
    call_s: float = 0.0
    admit_s: float = 0.0

    def __post_init__(self):
        if not isinstance(self.num_layers, int) or self.num_layers < 1:
            raise ServeError(f"num_layers={self.num_layers!r} must be a positive integer")
        for name in ("step_overhead_s", "token_s", "expert_s", "prefill_token_s", "call_s", "admit_s"):
            value = getattr(self, name)
            if value is None and name == "prefill_token_s":
                continue
            if not value >= 0.0 or value == float("inf"):
                raise ServeError(f"{name}={value!r} must be finite and >= 0")
        if not isinstance(self.slice_bytes, int) or self.slice_bytes < 0:
            raise ServeError(f"slice_bytes={self.slice_bytes!r} must be an integer >= 0")
        if not self.link_bytes_per_s > 0.0:
            raise ServeError(f"link_bytes_per_s={self.link_bytes_per_s!r} must be > 0")

    @property
    def slice_transfer_s(self) -> float:
        return self.slice_bytes / self.link_bytes_per_s

    def compute_s(self, num_tokens: int, num_experts: int, prefill_tokens: int = 0, prefill_items: int = 0,
                  admitted: int = 0) -> float:
        """Step 1; ``num_tokens`` counts prefill and decode tokens together."""
        decode = num_tokens - prefill_tokens
        prefill_token_s = self.token_s if self.prefill_token_s is None else self.prefill_token_s
        calls = prefill_items + (1 if decode > 0 else 0)
        return (self.step_overhead_s + self.token_s * decode + prefill_token_s * prefill_tokens
                + self.call_s * calls + self.expert_s * num_experts + self.admit_s * admitted)

    def step_s(
        self,
        num_tokens: int,
        num_experts: int,
        missing_per_layer,
        pipelined: bool = True,
        link_ready_s: float = 0.0,
        prefill_tokens: int = 0,
        prefill_items: int = 0,
        admitted: int = 0,
    ) -> tuple[float, float]:
        """Duration of one iteration and the time (from its start) at which the link is free again.

        Args:
          num_tokens, num_experts: the batch's size and distinct experts.
          missing_per_layer: slices to load before each layer: a list of N ints, or one int for every layer.
          pipelined: layer-ahead prefetch (True) or on-demand loading (False).
          link_ready_s: when the link finishes earlier transfers, from the iteration's start.
          prefill_tokens, prefill_items, admitted: the batch's prefill tokens and items, and the prompts admitted
            at this iteration (step 1).
        """
        compute = self.compute_s(num_tokens, num_experts, prefill_tokens, prefill_items, admitted)
        if isinstance(missing_per_layer, int):
            if missing_per_layer == 0:
                return compute, max(link_ready_s, 0.0)
            missing_per_layer = [missing_per_layer] * self.num_layers
        layer_s = compute / self.num_layers
        slice_s = self.slice_transfer_s
        link_free = max(link_ready_s, 0.0)
        compute_end = 0.0
        prev_start = 0.0  # start of the previous layer's compute (layer-ahead loads may begin then)
        # The conditionals pick what max() would (the first of equals): this loop runs per simulated iteration.
        for missing in missing_per_layer:
            start = compute_end
            if missing:
                earliest = prev_start if pipelined else compute_end
                load_start = earliest if earliest > link_free else link_free
                link_free = load_start + missing * slice_s
                if link_free > start:
                    start = link_free
            prev_start = start
            compute_end = start + layer_s
        return compute_end, link_free


def llama2_7b_a100() -> CostModel:
    """The paper's setting: Read-ME on Llama-2-7B (N=32, expert width 5504), fp16, one A100-80GB, PCIe 4.0.

    Spec-sheet inputs: HBM 2.039e12 B/s, 312e12 fp16 FLOP/s, host link 25e9 B/s (PCIe 4.0 x16 in practice).
    - slice_bytes = 3 matrices * 4096 * 5504 * 2 bytes = 135,266,304.
    - expert_s = 32 * slice_bytes / HBM (one expert streamed per step) = 2.12 ms.
    - step_overhead_s = non-expert weights / HBM: attention 4 * 4096^2 * 32 * 2 B plus embedding and head
      2 * 32000 * 4096 * 2 B, i.e. 4.82e9 B, = 2.36 ms.
    - token_s = 2 * 4.7e9 activated parameters / 312e12 = 30.1 us.
    """
    hbm = 2.039e12
    slice_bytes = 3 * 4096 * 5504 * 2
    non_expert_bytes = 4 * 4096 * 4096 * 32 * 2 + 2 * 32000 * 4096 * 2
    return CostModel(
        num_layers=32,
        step_overhead_s=non_expert_bytes / hbm,
        token_s=2 * 4.7e9 / 312e12,
        expert_s=32 * slice_bytes / hbm,
        slice_bytes=slice_bytes,
        link_bytes_per_s=25e9,
    )
