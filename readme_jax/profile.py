"""Activation profiling (Read-ME §3): mean |act(gate(x)) * up(x)| per MLP neuron, layer and domain.

The statistic is the down_proj input, reduced on device inside a jitted step (a probe on every
layer's MLP intermediate), streamed over fixed-length token blocks, accumulated in float64 on the host.
Saved as ``stats.npz`` (``mean_abs_DNF`` [domains, layers, F], ``tokens_D``) + ``stats.json``
(model, domains, tokens counted, block length), written atomically.
"""

import dataclasses
import json
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from readme_jax import atomic
from readme_jax.errors import ReadmeJaxError


@dataclasses.dataclass(frozen=True)
class ProfileStats:
    mean_abs_DNF: np.ndarray
    tokens_D: np.ndarray
    domains: tuple[str, ...]
    model: str
    d_ff: int
    n_layers: int
    block_len: int
    tokens_per_s: float = 0.0

    def check_model(self, cfg):
        if (self.n_layers, self.d_ff) != (cfg.n_layers, cfg.d_ff):
            raise ReadmeJaxError(f"activation stats are for a model with {self.n_layers} layers x {self.d_ff} "
                                 f"MLP neurons ({self.model}); this model has {cfg.n_layers} x {cfg.d_ff}")

    def save(self, folder: Path) -> Path:
        """stats.npz + stats.json, swapped in together (readers never see one file of another run)."""
        folder = Path(folder)
        with atomic.atomic_folder(folder) as tmp:
            np.savez(tmp / "stats.npz", mean_abs_DNF=self.mean_abs_DNF, tokens_D=self.tokens_D)
            meta = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("mean_abs_DNF", "tokens_D")}
            meta["tokens_per_domain"] = dict(zip(self.domains, self.tokens_D.tolist()))
            (tmp / "stats.json").write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: Path) -> "ProfileStats":
        folder = Path(folder)
        try:
            meta = json.loads((folder / "stats.json").read_text())
            arrays = np.load(folder / "stats.npz")
            return cls(mean_abs_DNF=arrays["mean_abs_DNF"], tokens_D=arrays["tokens_D"],
                       domains=tuple(meta["domains"]), model=meta["model"], d_ff=meta["d_ff"],
                       n_layers=meta["n_layers"], block_len=meta["block_len"],
                       tokens_per_s=meta.get("tokens_per_s", 0.0))
        except FileNotFoundError as exc:
            raise ReadmeJaxError(f"{folder}: no activation stats ({exc.filename} missing); run `readme-jax profile`") from None
        except (json.JSONDecodeError, KeyError, ValueError) as exc:
            raise ReadmeJaxError(f"{folder}: malformed activation stats ({exc})") from None


@partial(jax.jit, static_argnums=0)
def abs_sum_step(graphdef, state, tokens_BL, weight_B):
    """Sum over the block's tokens of |MLP intermediate|, per layer: [N, F] fp32 (rows weighted)."""
    model = nnx.merge(graphdef, state)
    sums = []
    B, L = tokens_BL.shape

    def probe(h_BLF):
        sums.append(jnp.einsum("BLF,B->F", jnp.abs(h_BLF.astype(jnp.float32)), weight_B))

    model.hidden(tokens_BL, jnp.broadcast_to(jnp.arange(L), (B, L)), jnp.ones((B, L), bool), probe=probe)
    return jnp.stack(sums)


def profile(lm, blocks_by_domain: dict[str, np.ndarray], batch_size: int = 4, progress: bool = True) -> ProfileStats:
    """Mean |activation| per (domain, layer, neuron) over the given token blocks [n_blocks, L]."""
    cfg = lm.cfg
    domains = tuple(blocks_by_domain)
    sums = np.zeros((len(domains), cfg.n_layers, cfg.d_ff))
    tokens = np.zeros(len(domains), np.int64)
    total = sum(len(b) for b in blocks_by_domain.values())
    bar = tqdm(total=total, desc="profiling", unit="block", disable=not progress)
    t0, counted = time.perf_counter(), 0
    for d, name in enumerate(domains):
        blocks = np.asarray(blocks_by_domain[name])
        if len(blocks) == 0:
            raise ReadmeJaxError(f"domain {name!r} has no text blocks to profile")
        for start in range(0, len(blocks), batch_size):
            batch = blocks[start:start + batch_size]
            weight = np.zeros(batch_size, np.float32)
            weight[: len(batch)] = 1.0  # a short last batch is padded with zero-weight rows: one compile
            padded = np.concatenate([batch, np.repeat(batch[-1:], batch_size - len(batch), axis=0)])
            sums[d] += np.asarray(abs_sum_step(lm.graphdef, lm.state, padded, weight))
            tokens[d] += batch.size
            counted += batch.size
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{counted / (time.perf_counter() - t0):.0f}")
    bar.close()
    rate = counted / (time.perf_counter() - t0)
    return ProfileStats(mean_abs_DNF=sums / tokens[:, None, None], tokens_D=tokens, domains=domains,
                        model=lm.source, d_ff=cfg.d_ff, n_layers=cfg.n_layers,
                        block_len=int(next(iter(blocks_by_domain.values())).shape[1]), tokens_per_s=rate)
