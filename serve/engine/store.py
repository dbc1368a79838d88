"""Host expert bank and device slots: the engine's ``ExpertStore``.

Every routed expert's weights (its specific neurons, all layers) live in host memory, one array per layer and
matrix, on the ``pinned_host`` memory kind where the device has it (the CPU backend does too), else as numpy.
The device holds C slots: per layer, slot c is a pair of arrays ``(w_gate_up_D2X, w_down_XD)`` of the sliced
MoE state (``readme_jax.moe``: separate arrays per slot, so replacing one slot touches nothing else), and the
model's ``slot_of_expert_E`` table says which expert each slot holds.

The ``ExpertCache`` decides; this store carries the decisions out. ``load``/``evict`` only queue (the cache
loads a key before it evicts its victim, so a load may arrive while every slot is still taken). ``flush`` then
frees the victims' slots, gives each loaded expert a free slot, starts an asynchronous ``device_put`` of its
host arrays into fresh device arrays (staging), and installs them by swapping the slot's leaves in the
engine's flat state and rewriting the table. The swap is the install: a step already dispatched keeps the
arrays it was given, so an in-flight step never sees a half-written slot, and no device-to-device copy is
needed. ``wait(experts)`` blocks until those experts' arrays are on the device and returns the seconds it
waited (the exposed stall).

``bytes_copied`` adds up the ``nbytes`` of every array handed to ``device_put``: the bytes really moved.
"""

import dataclasses
import re
import time

import jax
import numpy as np

from serve.core.types import ServeError

_SLOT_LEAF = re.compile(r"\['blocks'\]\[(\d+)\]\['experts'\]\[(\d+)\]\['(w_gate_up_D2X|w_down_XD)'\]")
_TABLE_LEAF = "['slot_of_expert_E']"
MATRICES = ("w_gate_up_D2X", "w_down_XD")


def leaf_paths(state) -> tuple[list[str], list, object]:
    """(path strings, leaves, treedef) of a state pytree."""
    with_path, treedef = jax.tree_util.tree_flatten_with_path(state)
    return [jax.tree_util.keystr(p) for p, _ in with_path], [x for _, x in with_path], treedef


def slot_index(paths) -> dict:
    """{(layer, slot, matrix): leaf index} and the slot table's leaf index."""
    index = {}
    table = None
    for i, path in enumerate(paths):
        m = _SLOT_LEAF.match(path)
        if m:
            index[(int(m.group(1)), int(m.group(2)), m.group(3))] = i
        elif path.startswith(_TABLE_LEAF):
            table = i
    return index, table


def memory_kinds(device) -> set:
    try:
        return {m.kind for m in device.addressable_memories()}
    except Exception:  # an old runtime without memory kinds
        return set()


@dataclasses.dataclass
class StoreLog:
    """One carried-out cache decision."""

    iteration: int
    op: str  # "load" or "evict"
    expert: int
    slot: int


class SlotStore:
    """C device slots over a host bank of E experts (module docstring)."""

    def __init__(self, bank, leaves: list, index: dict, table_leaf: int, num_experts: int, num_slots: int,
                 num_layers: int, device):
        self.bank = bank  # bank[e][(layer, matrix)] -> host array
        self.leaves = leaves  # the engine's flat state, updated in place
        self.index = index
        self.table_leaf = table_leaf
        self.num_experts, self.num_slots, self.num_layers = num_experts, num_slots, num_layers
        self.device = device
        self.sharding = jax.sharding.SingleDeviceSharding(device)
        self.slot_of_expert = np.full(num_experts, -1, np.int32)
        self.expert_of_slot = np.full(num_slots, -1, np.int32)
        self._ops: list[tuple[str, int]] = []
        self._staged: dict[int, list] = {}  # expert -> arrays not yet known to be on the device
        self.bytes_copied = 0
        self.copies = 0
        self.log: list[StoreLog] = []  # what was carried out, with slots
        self.decisions: list[tuple[int, str, int]] = []  # (iteration, op, expert) in the cache's decision order
        self.iteration = 0
        self.expert_bytes = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in bank[0].values())
        self._write_table()

    @classmethod
    def from_full_state(cls, full_paths, full_leaves, slot_paths, slot_leaves, num_experts: int, num_slots: int,
                        num_layers: int, device=None):
        """Split a state with every expert in its own slot (slot e = expert e) into a host bank, and fill the
        leaves of a C-slot state (same paths otherwise) from it; the slots start empty."""
        device = device or jax.devices()[0]
        full_index, _ = slot_index(full_paths)
        host_kind = "pinned_host" if "pinned_host" in memory_kinds(device) else None
        host = (jax.sharding.SingleDeviceSharding(device, memory_kind=host_kind) if host_kind else None)
        bank = []
        for e in range(num_experts):
            arrays = {}
            for n in range(num_layers):
                for name in MATRICES:
                    x = full_leaves[full_index[(n, e, name)]]
                    arrays[(n, name)] = jax.device_put(x, host) if host is not None else np.asarray(x)
            bank.append(arrays)
        by_path = dict(zip(full_paths, full_leaves))
        leaves = []
        for path, abstract in zip(slot_paths, slot_leaves):
            if path not in by_path:
                raise ServeError(f"engine: the sliced state has no leaf {path}")
            leaves.append(by_path[path])
        index, table = slot_index(slot_paths)
        if table is None or len(index) != num_layers * num_slots * len(MATRICES):
            raise ServeError("engine: the model state has no per-slot expert weights (a sliced MoE with the "
                             "default 'slots' kernel is needed)")
        store = cls(bank, leaves, index, table, num_experts, num_slots, num_layers, device)
        store.host_memory_kind = host_kind or "numpy"
        return store

    def reset(self) -> None:
        """Every slot free and every counter zero (the weights in the slots are left; nothing reads them)."""
        self.slot_of_expert[:] = -1
        self.expert_of_slot[:] = -1
        self._ops, self._staged = [], {}
        self.bytes_copied = self.copies = self.iteration = 0
        self.log, self.decisions = [], []
        self._write_table()

    # ---- ExpertStore protocol: called by ExpertCache, in decision order ------------------------------------
    def load(self, expert: int) -> None:
        self._check(expert)
        self._ops.append(("load", expert))
        self.decisions.append((self.iteration, "load", expert))

    def evict(self, expert: int) -> None:
        self._check(expert)
        self._ops.append(("evict", expert))
        self.decisions.append((self.iteration, "evict", expert))

    def _check(self, expert: int) -> None:
        if not 0 <= expert < self.num_experts:
            raise ServeError(f"unknown expert id {expert}: the model has experts 0..{self.num_experts - 1}")

    # ---- carrying the decisions out -------------------------------------------------------------------------
    def flush(self) -> list[int]:
        """Apply the queued decisions (module docstring); returns the experts loaded."""
        ops, self._ops = self._ops, []
        if not ops:
            return []
        loaded = []
        for op, expert in ops:
            if op == "evict":
                if expert in loaded:  # a bypass: the cache dropped the key it just loaded
                    raise ServeError(f"engine: expert {expert} was loaded and dropped in one step (the running "
                                     "batch's experts must be protected)")
                slot = int(self.slot_of_expert[expert])
                if slot < 0:
                    raise ServeError(f"engine: evicting expert {expert}, which holds no slot")
                self.slot_of_expert[expert] = -1
                self.expert_of_slot[slot] = -1
                self._staged.pop(expert, None)
                self.log.append(StoreLog(self.iteration, "evict", expert, slot))
            else:
                loaded.append(expert)
        for expert in loaded:
            free = np.flatnonzero(self.expert_of_slot < 0)
            if not free.size:
                raise ServeError(f"engine: no free slot for expert {expert} ({self.num_slots} slots)")
            slot = int(free[0])
            self._install(expert, slot)
            self.log.append(StoreLog(self.iteration, "load", expert, slot))
        self._write_table()
        return loaded

    def _install(self, expert: int, slot: int) -> None:
        staged = []
        for (n, name), host in self.bank[expert].items():
            x = jax.device_put(host, self.sharding)  # asynchronous; a fresh array
            self.leaves[self.index[(n, slot, name)]] = x
            self.bytes_copied += int(np.prod(host.shape)) * host.dtype.itemsize
            staged.append(x)
        self.copies += 1
        self._staged[expert] = staged
        self.slot_of_expert[expert] = slot
        self.expert_of_slot[slot] = expert

    def _write_table(self) -> None:
        self.leaves[self.table_leaf] = jax.device_put(self.slot_of_expert.copy(), self.sharding)

    def wait(self, experts) -> float:
        """Block until ``experts``' staged arrays are on the device; the seconds spent waiting."""
        pending = [x for e in experts for x in self._staged.pop(e, ())]
        if not pending:
            return 0.0
        t0 = time.perf_counter()
        jax.block_until_ready(pending)
        return time.perf_counter() - t0

    def resident(self) -> set:
        return {int(e) for e in np.flatnonzero(self.slot_of_expert >= 0)}

    def slot_bytes(self) -> int:
        """Bytes of the slot arrays now referenced by the state (C x expert bytes)."""
        return sum(self.leaves[i].nbytes for i in self.index.values())
