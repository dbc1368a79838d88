"""Training configuration: one frozen dataclass, three presets, ``key=value`` overrides.

* ``paper``: Table 2 of the paper for Llama-2-7B (8 rounds of 100 router + 200 expert steps, batch 64 / 128,
  4096 tokens, lr 5e-4 / 5e-5, cosine within a round, x0.8 per round, weight decay 0.01, bf16).
* ``default``: the embedded SmolLM2-135M on a 2-core CPU in minutes (short blocks, few steps, larger
  learning rates because there are few steps); the expert stage learns the text and the dense teacher
  (``expert_loss=mix``), which measured best on the default model.
* ``tiny``: the test suite's random tiny models (``expert_loss=lm``, the paper's, as ``paper``).
"""

import dataclasses
import typing

import numpy as np

from readme_jax.errors import ReadmeJaxError
from train.losses import DISTILL_FORMS, EXPERT_LOSSES, KL_DIRECTIONS

TEACHERS = ("dense", "previous")  # the original dense model, or the previous round's backbone run dense
EXPERT_PARAMS = ("experts", "all")  # expert stage trains the MLPs only, or every non-router parameter
COMPUTE_DTYPES = ("float32", "bfloat16")
MLP_COMPUTES = ("auto", "mask", "gather")  # how the masked MoE computes its MLP (readme_jax.moe.MASKED_COMPUTES)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    preset: str = "default"
    rounds: int = 2
    router_steps: int = 80
    expert_steps: int = 20
    router_batch: int = 8  # sequences per optimizer step
    expert_batch: int = 4
    micro_batch: int = 4  # sequences per forward; batch / micro_batch = gradient-accumulation steps
    seq_len: int = 256
    router_lr: float = 1e-3
    expert_lr: float = 1e-4
    round_decay: float = 0.8  # lr multiplier per round (exponential across rounds)
    warmup_frac: float = 0.1  # linear warm-up over this fraction of each stage (the reference code uses 0)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    distill: str = "paper"
    kl_tau: float = 0.005
    kl_direction: str = "target_router"
    teacher: str = "dense"
    expert_params: str = "all"
    # lm: the text's next token (the paper); kd: the dense teacher's distribution; mix: both, the measured best on
    # the default model (docs/training.md)
    expert_loss: str = "mix"
    kd_weight: float = 0.5  # mix: (1 - kd_weight) * lm + kd_weight * kd
    compute_dtype: str = "float32"
    remat: bool = False  # per-block rematerialisation in the training steps (activation memory of one block)
    mlp_compute: str = "auto"  # mask: all d_ff neurons times the mask; gather: only the k kept; auto: resolve_mlp_compute
    router_mlp: str = "silu"
    router_d_model: int = 0  # 0: the largest width within the 2% cost budget (RouterConfig.for_backbone)
    router_rope_theta: float = 0.0  # 0: the backbone's rope_theta, as the reference code does
    mesh: str = "data=-1"  # axis sizes of the (data, fsdp, tensor) mesh; -1: the remaining devices
    devices: int = 0  # use the first N devices (0: all)
    blocks_per_domain: int = 48  # training blocks read per domain (train split)
    doc_chars: int = 2048  # characters kept per document (many short excerpts generalise better)
    chat_every: int = 0  # every k-th training row: a train excerpt in a chat prompt + the dense answer (0: none)
    chat_per_domain: int = 16  # chat prompts per domain in the pool (train.chat_data)
    chat_answer_tokens: int = 64  # longest dense answer of a chat row
    save_every: int = 20
    max_to_keep: int = 2
    seed: int = 0

    def __post_init__(self):
        positive = ("rounds", "router_batch", "expert_batch", "micro_batch", "seq_len", "save_every",
                    "max_to_keep", "blocks_per_domain")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ReadmeJaxError(f"train config: {name}={getattr(self, name)} must be positive")
        for name in ("router_steps", "expert_steps", "router_d_model", "doc_chars", "devices"):
            if getattr(self, name) < 0:
                raise ReadmeJaxError(f"train config: {name}={getattr(self, name)} must be >= 0")
        for name in ("router_batch", "expert_batch"):
            if getattr(self, name) % self.micro_batch:
                raise ReadmeJaxError(f"train config: {name}={getattr(self, name)} is not a multiple of "
                                     f"micro_batch={self.micro_batch}")
        choices = {"distill": DISTILL_FORMS, "kl_direction": KL_DIRECTIONS, "teacher": TEACHERS,
                   "expert_params": EXPERT_PARAMS, "compute_dtype": COMPUTE_DTYPES, "router_mlp": ("silu", "swiglu"),
                   "expert_loss": EXPERT_LOSSES, "mlp_compute": MLP_COMPUTES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ReadmeJaxError(f"train config: {name}={getattr(self, name)!r} not one of {allowed}")
        if self.router_lr <= 0 or self.expert_lr < 0 or not 0 < self.round_decay <= 1 or self.kl_tau <= 0:
            raise ReadmeJaxError("train config: router_lr and kl_tau must be > 0, expert_lr >= 0, "
                                 "round_decay in (0, 1]")
        if self.router_rope_theta < 0:
            raise ReadmeJaxError(f"train config: router_rope_theta={self.router_rope_theta} must be >= 0 "
                                 "(0: the backbone's)")
        if not 0 <= self.warmup_frac < 1:
            raise ReadmeJaxError(f"train config: warmup_frac={self.warmup_frac} must be in [0, 1)")
        if not 0 < self.kd_weight <= 1:
            raise ReadmeJaxError(f"train config: kd_weight={self.kd_weight} must be in (0, 1]")
        if self.seq_len < 2:
            raise ReadmeJaxError(f"train config: seq_len={self.seq_len} must be >= 2")
        if self.chat_every < 0 or self.chat_per_domain < 1 or not 1 <= self.chat_answer_tokens < (
                self.seq_len if self.chat_every else float("inf")):
            raise ReadmeJaxError(f"train config: chat_every={self.chat_every} must be >= 0, chat_per_domain="
                                 f"{self.chat_per_domain} >= 1 and chat_answer_tokens={self.chat_answer_tokens} in "
                                 f"[1, seq_len={self.seq_len})")

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def fingerprint(self) -> dict:
        """What a checkpoint must agree on to be resumed (shapes and the data stream)."""
        keys = ("seq_len", "micro_batch", "router_batch", "expert_batch", "router_mlp", "router_d_model",
                "blocks_per_domain", "doc_chars", "seed", "compute_dtype", "rounds", "router_steps", "expert_steps")
        if self.chat_every:  # only then: checkpoints of runs without chat rows keep their fingerprint
            keys += ("chat_every", "chat_per_domain", "chat_answer_tokens")
        return {k: getattr(self, k) for k in keys}


PRESETS = {
    "paper": TrainConfig(preset="paper", rounds=8, router_steps=100, expert_steps=200, router_batch=64,
                         expert_batch=128, micro_batch=8, seq_len=4096, router_lr=5e-4, expert_lr=5e-5,
                         kl_tau=0.02, teacher="dense", expert_params="experts", compute_dtype="bfloat16",
                         warmup_frac=0.0, remat=True, mesh="fsdp=-1",  # fits 80 GB devices: docs/training.md
                         blocks_per_domain=4096, doc_chars=0, save_every=50, max_to_keep=3, expert_loss="lm"),
    "default": TrainConfig(),
    "tiny": TrainConfig(preset="tiny", rounds=2, router_steps=3, expert_steps=2, router_batch=8, expert_batch=8,
                        micro_batch=4, seq_len=16, router_lr=1e-2, expert_lr=1e-3, blocks_per_domain=6,
                        doc_chars=0, save_every=2, router_d_model=16, expert_loss="lm"),
}


def _coerce(name: str, hint, text: str):
    try:
        if hint is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        return hint(text)
    except ValueError:
        raise ReadmeJaxError(f"override {name}={text!r}: not a valid {hint.__name__}") from None


def make_config(preset: str = "default", overrides=()) -> TrainConfig:
    """A preset with ``key=value`` overrides applied; unknown presets and keys are named in the error."""
    if preset not in PRESETS:
        raise ReadmeJaxError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    hints = typing.get_type_hints(TrainConfig)
    changes = {}
    for item in overrides:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise ReadmeJaxError(f"override {item!r} must look like key=value")
        if name not in hints or name == "preset":
            valid = ", ".join(k for k in hints if k != "preset")
            raise ReadmeJaxError(f"unknown override key {name!r}; valid keys: {valid}")
        changes[name] = _coerce(name, hints[name], value.strip())
    return PRESETS[preset].replace(**changes)


def resolve_mlp_compute(choice: str, masks_NEF) -> str:
    """The masked MoE's ``masked_compute`` for a run: ``choice`` unless it is ``"auto"``.

    ``auto`` gathers for a single expert (the pruned-dense baseline: one dense SwiGLU over half the neurons,
    0.79x the masked step's time in scripts/train_step_bench.py) and masks otherwise: with E = 6 experts the
    per-forward weight gather (E * k = 3 d_ff columns) ate the saved FLOPs on the CPU (1.00x, docs/pipeline.md).
    Gathering also needs every expert to keep the same number of neurons in every layer.
    """
    if choice != "auto":
        return choice
    counts = np.asarray(masks_NEF, bool).sum(axis=-1)
    return "gather" if counts.shape[1] == 1 and (counts == counts.flat[0]).all() else "mask"
