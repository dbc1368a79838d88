"""Grouped expert matmul for Read-ME's one-expert-per-token MoE: metadata, ops, implementations.

Public API (rows "sorted" = ordered by expert with ``sort_tokens``; I and O are the input and output
widths of one grouped matmul, e.g. D and X for gate/up, X and D for down):
  make_group_metadata(expert_id_T, E, tile_m=128)  -> GroupMetadata (once per forward, every layer)
  group_metadata_from_sizes(group_sizes_E, T)      -> GroupMetadata for rows already sorted
  sort_tokens(x_TD, meta) / unsort_tokens(y_TX, meta)
  gmm(x_TI, w_EIO, meta, implementation=None)                        -> [T, O]
  tgmm(x_TI, dy_TO, meta, implementation=None)                       -> [E, I, O]
  expert_mlp(x_TD, w_gate_EDX, w_up_EDX, w_down_EXD, meta, implementation=None) -> [T, D]
  make_moe_metadata(expert_id_BL, E) / moe_mlp(x_BLD, w_gate_EDX, w_up_EDX, w_down_EXD, meta)
  make_slot_plan(slot_T, C) / slot_mlp(x_TD, plan, experts)  -> [T, D] over C per-slot weight tuples
"""

from kernels.gmm.api import IMPLEMENTATIONS, expert_mlp, gmm, resolve_implementation, tgmm
from kernels.gmm.checks import GmmInputError, ImplementationUnavailableError
from kernels.gmm.metadata import (
    DEFAULT_TILE_M,
    GroupMetadata,
    group_metadata_from_sizes,
    make_group_metadata,
    sort_tokens,
    unsort_tokens,
)
from kernels.gmm.moe_mlp import make_moe_metadata, moe_mlp
from kernels.gmm.pallas import BlockSizes
from kernels.gmm.slotted import SlotPlan, make_slot_plan, slot_mlp, slot_mlp_reference, swiglu

__all__ = [
    "BlockSizes",
    "SlotPlan",
    "DEFAULT_TILE_M",
    "GmmInputError",
    "GroupMetadata",
    "IMPLEMENTATIONS",
    "ImplementationUnavailableError",
    "expert_mlp",
    "gmm",
    "group_metadata_from_sizes",
    "make_group_metadata",
    "make_moe_metadata",
    "make_slot_plan",
    "moe_mlp",
    "resolve_implementation",
    "slot_mlp",
    "slot_mlp_reference",
    "sort_tokens",
    "swiglu",
    "tgmm",
    "unsort_tokens",
]
