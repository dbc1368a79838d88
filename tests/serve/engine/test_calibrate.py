"""``bench.calibrate`` recovers the cost model that generated a record, and the richer terms fit what the paper's
cannot (pure numpy: no engine is built)."""

import math
import random
import types

import pytest

from serve.core.types import ServeError
from serve.engine import bench
from serve.sim.cost_model import CostModel

LAYERS, EXPERT_BYTES = 4, 4000


def _rows(cost: CostModel, load_s: float, iterations: int = 300, seed: int = 0):
    """One synthetic run whose iteration durations follow ``cost`` exactly (no noise)."""
    rng = random.Random(seed)
    rec = types.SimpleNamespace(batch_tokens=[], batch_experts=[], batch_duration_s=[], batch_prefill=[],
                                batch_prefill_tokens=[], batch_admitted=[])
    loads = []
    for _ in range(iterations):
        prefill = rng.randrange(3)
        prefill_tokens = sum(rng.randrange(1, 200) for _ in range(prefill))
        decode = rng.randrange(0 if prefill else 1, 12)
        experts, admitted, load = rng.randrange(1, 4), rng.randrange(3), rng.randrange(3)
        rec.batch_tokens.append(decode + prefill_tokens)
        rec.batch_experts.append(experts)
        rec.batch_prefill.append(prefill)
        rec.batch_prefill_tokens.append(prefill_tokens)
        rec.batch_admitted.append(admitted)
        rec.batch_duration_s.append(cost.compute_s(decode + prefill_tokens, experts, prefill_tokens, prefill, admitted)
                                    + load * load_s)
        loads.append(load)
    return [{"record": rec, "loads_per_iteration": loads}]


def test_calibrate_recovers_the_engine_terms_and_the_paper_terms_fit_less():
    truth = CostModel(num_layers=LAYERS, step_overhead_s=2e-3, token_s=3e-3, expert_s=20e-3, slice_bytes=1000,
                      link_bytes_per_s=1000 * LAYERS / 5e-3, prefill_token_s=1e-3, call_s=15e-3, admit_s=4e-3)
    rows = _rows(truth, load_s=5e-3)
    fitted, r2 = bench.calibrate(rows, LAYERS, EXPERT_BYTES, "engine")
    assert r2 == pytest.approx(1.0)
    for name in ("step_overhead_s", "token_s", "prefill_token_s", "call_s", "expert_s", "admit_s",
                 "link_bytes_per_s"):
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=1e-6, abs=1e-9), name
    paper, paper_r2 = bench.calibrate(rows, LAYERS, EXPERT_BYTES, "paper")
    assert paper.prefill_token_s is None and paper.call_s == 0.0 and paper.admit_s == 0.0
    assert paper_r2 < 0.99


def test_paper_terms_are_the_engine_terms_when_calls_and_admissions_cost_nothing():
    truth = CostModel(num_layers=LAYERS, step_overhead_s=1e-3, token_s=2e-3, expert_s=10e-3, slice_bytes=1000,
                      link_bytes_per_s=1000 * LAYERS / 4e-3)
    paper, r2 = bench.calibrate(_rows(truth, load_s=4e-3), LAYERS, EXPERT_BYTES, "paper")
    assert r2 == pytest.approx(1.0)
    assert paper.token_s == pytest.approx(truth.token_s) and paper.expert_s == pytest.approx(truth.expert_s)


def test_cost_model_terms_and_bad_values():
    cost = CostModel(num_layers=2, step_overhead_s=1.0, token_s=2.0, expert_s=3.0, slice_bytes=1,
                     link_bytes_per_s=1.0, prefill_token_s=0.5, call_s=7.0, admit_s=11.0)
    # 4 decode tokens, 10 prefill tokens in 2 items: 3 calls; 2 experts; 1 admitted prompt.
    assert cost.compute_s(14, 2, 10, 2, 1) == 1.0 + 2.0 * 4 + 0.5 * 10 + 7.0 * 3 + 3.0 * 2 + 11.0
    assert cost.compute_s(10, 1, 10, 1) == 1.0 + 5.0 + 7.0 + 3.0  # no decodes: no decode call
    plain = CostModel(num_layers=2, step_overhead_s=1.0, token_s=2.0, expert_s=3.0, slice_bytes=1, link_bytes_per_s=1.0)
    assert plain.compute_s(14, 2, 10, 2, 1) == plain.compute_s(14, 2)  # the paper's model: one kind of token
    for bad in ({"call_s": -1.0}, {"admit_s": math.inf}, {"prefill_token_s": math.nan}):
        with pytest.raises(ServeError, match=next(iter(bad))):
            CostModel(num_layers=2, step_overhead_s=1.0, token_s=2.0, expert_s=3.0, slice_bytes=1,
                      link_bytes_per_s=1.0, **bad)
    with pytest.raises(ServeError, match="calibration terms"):
        bench.calibrate([], LAYERS, EXPERT_BYTES, "cubic")
