"""Device mesh and parameter sharding for training: data parallel x FSDP x tensor parallel.

1. ``MeshSpec`` / ``make_mesh``: a 3-axis mesh ("data", "fsdp", "tensor"). ``tensor`` is the innermost
   (fastest-varying) axis, so tensor-parallel groups are neighbouring devices of one host (NVLink), and
   ``data`` the outermost: when fsdp x tensor fits in one host, only the gradient all-reduce crosses hosts.
2. ``RULES`` maps logical axis names to mesh axes; ``PARAM_AXES`` gives the logical axes of every state leaf
   of ``Llama``, ``MoELlama`` (both forms, masks included) and ``Router``, by leaf name. A leaf whose name is
   not in the table is an error, so a new parameter cannot silently stay replicated.
3. ``state_shardings`` turns any state pytree (an ``nnx.State``, a pure dict, an optax state over either,
   or an abstract state of ``jax.ShapeDtypeStruct``) into the same pytree of ``NamedSharding``, ready for
   ``jax.jit(in_shardings=..., out_shardings=...)``.

The batch is split over ("data", "fsdp") together: FSDP devices hold different examples as well as
different parameter shards (ZeRO-3 style), so every device does useful work.
"""

import dataclasses
import math
import os
from types import MappingProxyType

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from readme_jax.errors import ReadmeJaxError
from readme_jax.model import LOGICAL_AXES
from readme_jax.trees import leaf_name

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes (None: replicated). Small or gathered-over axes stay replicated: the expert axis E
# is indexed per token (a gather), and the router's E outputs are a handful of columns.
RULES = MappingProxyType({
    "batch": ("data", "fsdp"),
    "length": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "expert": None,
    "expert_mlp": "tensor",
    "experts_out": None,
})

# Logical axes of every state leaf, by leaf name: the dense model's table plus the MoE and router leaves.
PARAM_AXES = MappingProxyType({
    **LOGICAL_AXES,
    # MoELlama, sliced form (inference): the permanent neurons, and each slot's routed neurons, per slot or
    # stacked over the C slots; the slot table is replicated.
    "w_gate_up_D2R": ("embed", "mlp"),
    "w_down_RD": ("mlp", "embed"),
    "w_gate_up_D2X": ("embed", "expert_mlp"),
    "w_down_XD": ("expert_mlp", "embed"),
    "w_gate_CDX": ("expert", "embed", "expert_mlp"),
    "w_up_CDX": ("expert", "embed", "expert_mlp"),
    "w_down_CXD": ("expert", "expert_mlp", "embed"),
    "slot_of_expert_E": ("expert",),
    # The masked form's NeuronMask. Its F follows the MLP intermediate it multiplies, so the product stays local.
    "mask_EF": ("expert", "mlp"),
    # Router (no GQA: its keys and values have one head per query head).
    "w_k_DHK": ("embed", "heads", "head_dim"),
    "w_v_DHK": ("embed", "heads", "head_dim"),
    "b_q_HK": ("heads", "head_dim"),
    "b_k_HK": ("heads", "head_dim"),
    "b_v_HK": ("heads", "head_dim"),
    "b_o_D": ("embed",),
    "b_gate_F": ("mlp",),
    "b_up_F": ("mlp",),
    "b_down_D": ("embed",),
    "w_router_out_DE": ("embed", "experts_out"),
    "b_router_out_E": ("experts_out",),
})


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    """Mesh axis sizes; -1 (at most one axis) means "all devices the other axes leave"."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        sizes = self.sizes()
        for name, size in zip(MESH_AXES, sizes):
            if size == 0 or size < -1:
                raise ReadmeJaxError(f"mesh: {name}={size} must be a positive size or -1 (all remaining devices)")
        if sizes.count(-1) > 1:
            raise ReadmeJaxError(f"mesh: at most one axis may be -1, got {self}")

    def sizes(self) -> tuple[int, int, int]:
        return self.data, self.fsdp, self.tensor

    @classmethod
    def parse(cls, text: str) -> "MeshSpec":
        """``"data=2,fsdp=2,tensor=2"``; omitted axes keep their defaults, ``""`` gives the default spec."""
        fields = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, eq, value = (s.strip() for s in item.partition("="))
            if not eq or name not in MESH_AXES:
                raise ReadmeJaxError(f"mesh: {item!r} is not AXIS=SIZE with AXIS one of {MESH_AXES}")
            if name in fields:
                raise ReadmeJaxError(f"mesh: axis {name!r} given twice in {text!r}")
            try:
                fields[name] = int(value)
            except ValueError:
                raise ReadmeJaxError(f"mesh: size {value!r} of axis {name!r} is not an integer") from None
        return cls(**fields)

    def resolve(self, n_devices: int) -> tuple[int, int, int]:
        """Concrete sizes for ``n_devices``; their product must equal it."""
        sizes = self.sizes()
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if n_devices % known:
                raise ReadmeJaxError(f"mesh: sizes {self.describe()} (product {known}) do not divide "
                                     f"the {n_devices} devices")
            sizes = tuple(n_devices // known if s == -1 else s for s in sizes)
        elif known != n_devices:
            raise ReadmeJaxError(f"mesh: sizes {self.describe()} (product {known}) do not match "
                                 f"the {n_devices} devices")
        return sizes

    def describe(self) -> str:
        return ",".join(f"{name}={size}" for name, size in zip(MESH_AXES, self.sizes()))


def make_mesh(spec: MeshSpec | str = MeshSpec(), devices=None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh over ``devices`` (default: every device of every process)."""
    if isinstance(spec, str):
        spec = MeshSpec.parse(spec)
    devices = list(jax.devices() if devices is None else devices)
    shape = spec.resolve(len(devices))
    # Auto axis types spelled out: GSPMD-style propagation inside jit, whatever newer jax makes the default.
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    try:
        # jax.make_mesh orders devices by physical topology (ICI/NVLink neighbours on the inner axes).
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
    except (ValueError, NotImplementedError):
        # A device subset the topology helper cannot tile: plain row-major order is still a valid mesh.
        return Mesh(np.asarray(devices, dtype=object).reshape(shape), MESH_AXES, axis_types=auto)


def _mesh_axes(logical: str, mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes of a logical axis, without the ones of size 1 (absent axes count as size 1)."""
    if logical not in RULES:
        raise ReadmeJaxError(f"no mesh rule for logical axis {logical!r}; known: {sorted(RULES)}")
    target = RULES[logical]
    target = () if target is None else (target,) if isinstance(target, str) else tuple(target)
    return tuple(a for a in target if mesh.shape.get(a, 1) > 1)


def logical_spec(logical_axes, shape, mesh: Mesh) -> PartitionSpec:
    """The PartitionSpec of an array of ``shape`` whose dimensions carry ``logical_axes``.

    A dimension not divisible by its mesh axes' size is replicated instead of failing: real configs have
    such dimensions (SmolLM2-135M has 9 heads and 3 KV heads, vocabularies are often odd), and sharding
    them unevenly would need padding in every op. Replication costs memory on that one leaf, never
    correctness. A mesh axis already used by an earlier dimension is likewise skipped, as a spec may
    name each mesh axis once.
    """
    if len(logical_axes) != len(shape):
        raise ReadmeJaxError(f"logical axes {tuple(logical_axes)} do not fit an array of shape {tuple(shape)}")
    used, spec = set(), []
    for dim, logical in zip(shape, logical_axes):
        axes = _mesh_axes(logical, mesh)
        size = math.prod(mesh.shape[a] for a in axes)
        if not axes or dim % size or used & set(axes):
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def leaf_spec(path, leaf, mesh: Mesh) -> PartitionSpec:
    shape = tuple(getattr(leaf, "shape", np.shape(leaf)))
    if not shape:  # scalars (optimizer step counts): nothing to split
        return PartitionSpec()
    name = leaf_name(path)
    where = jax.tree_util.keystr(tuple(path))
    if name not in PARAM_AXES:
        raise ReadmeJaxError(f"no sharding rule for state leaf {name!r} at {where} (shape {shape}): "
                             "add its logical axes to PARAM_AXES in train/sharding.py")
    try:
        return logical_spec(PARAM_AXES[name], shape, mesh)
    except ReadmeJaxError as e:
        raise ReadmeJaxError(f"state leaf {where}: {e}") from None


def state_shardings(state, mesh: Mesh):
    """The same pytree as ``state`` (nnx.State, pure dict, optax state, abstract state) of NamedShardings."""
    return jax.tree_util.tree_map_with_path(lambda p, x: NamedSharding(mesh, leaf_spec(p, x, mesh)), state)


def shard_state(state, mesh: Mesh):
    """``state`` placed on the mesh by ``state_shardings``.

    Multi-host: every process must pass the same full values (e.g. all load the same checkpoint); to avoid
    materialising full weights per host, initialise under ``jax.jit(init, out_shardings=...)`` instead.
    """
    return jax.device_put(state, state_shardings(state, mesh))


def host_to_global(array, sharding: NamedSharding) -> jax.Array:
    """A global ``jax.Array`` from a host value that every process holds in full (the same on each).

    Each process copies only the shards of its own devices, so this works on any number of processes (jit
    refuses a bare numpy input with a non-replicated sharding once the mesh spans several processes).
    """
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def to_host(tree):
    """A numpy copy of every leaf, on every process. A leaf sharded over other processes' devices is
    all-gathered, which is a collective: in a multi-process job every process must call this together."""
    from jax.experimental import multihost_utils

    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(fetch, tree)


def is_primary() -> bool:
    """Whether this process writes the job's files (metrics, plots, exports): process 0 of the job."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process of the job reaches ``name`` (a no-op in a one-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in _mesh_axes("batch", mesh))


def check_batch(batch_size: int, mesh: Mesh) -> None:
    """The global batch must split evenly over the data-parallel devices (data x fsdp)."""
    dp = data_parallel_size(mesh)
    if batch_size <= 0 or batch_size % dp:
        sizes = " x ".join(f"{a}={mesh.shape.get(a, 1)}" for a in ("data", "fsdp"))
        raise ReadmeJaxError(f"batch size {batch_size} does not divide over the data-parallel size {dp} "
                             f"({sizes}); use a multiple of {dp}")


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) dimension split over ("data", "fsdp"), the other ``ndim - 1`` replicated."""
    if ndim < 1:
        raise ReadmeJaxError(f"a batch array needs a leading batch dimension, got ndim={ndim}")
    axes = _mesh_axes("batch", mesh)
    lead = None if not axes else axes[0] if len(axes) == 1 else axes
    return NamedSharding(mesh, PartitionSpec(lead, *([None] * (ndim - 1))))


# Launch signals of a multi-process job. jax.distributed.initialize() reads JAX_COORDINATOR_ADDRESS itself
# and auto-detects SLURM (srun) and Open MPI (mpirun); JAX_NUM_PROCESSES / JAX_PROCESS_ID are ours, passed on.
# READMEJAX_DISTRIBUTED=1 forces initialisation for other launchers (Kubernetes, TPU pods), =0 disables it.
_FORCE_ENV = "READMEJAX_DISTRIBUTED"


def _distributed_kwargs(environ) -> dict | None:
    """``jax.distributed.initialize`` keyword arguments when launched multi-process, else None."""
    force = environ.get(_FORCE_ENV, "").strip()
    if force == "0":
        return None

    def count(var):
        try:
            return int(environ.get(var, "1"))
        except ValueError:
            raise ReadmeJaxError(f"environment variable {var}={environ[var]!r} is not an integer") from None

    kwargs = {}
    if environ.get("JAX_NUM_PROCESSES"):
        kwargs["num_processes"] = count("JAX_NUM_PROCESSES")
    if environ.get("JAX_PROCESS_ID"):
        kwargs["process_id"] = count("JAX_PROCESS_ID")
    if environ.get("JAX_COORDINATOR_ADDRESS") or kwargs.get("num_processes", 1) > 1:
        return kwargs
    slurm_step = count("SLURM_NTASKS") > 1 and "SLURM_PROCID" in environ  # inside srun, not bare salloc
    mpi = count("OMPI_COMM_WORLD_SIZE") > 1 and "OMPI_MCA_orte_hnp_uri" in environ
    if slurm_step or mpi or force == "1":
        return kwargs
    return None


_TIMEOUT_ENV = "READMEJAX_INIT_TIMEOUT"  # seconds to wait for the coordinator and the other processes


def _init_timeout(environ) -> int:
    text = environ.get(_TIMEOUT_ENV, "300").strip()
    try:
        timeout = int(text)
    except ValueError:
        raise ReadmeJaxError(f"environment variable {_TIMEOUT_ENV}={text!r} is not an integer (seconds)") from None
    if timeout <= 0:
        raise ReadmeJaxError(f"environment variable {_TIMEOUT_ENV}={timeout} must be a positive number of seconds")
    return timeout


def wait_for_coordinator(address: str, timeout: float) -> None:
    """Return once ``host:port`` accepts a TCP connection; a ReadmeJaxError after ``timeout`` seconds."""
    import socket
    import time

    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ReadmeJaxError(f"JAX_COORDINATOR_ADDRESS={address!r} is not HOST:PORT")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=min(2.0, timeout)):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise ReadmeJaxError(f"the coordinator {address} (process 0 of the job) did not answer within "
                                     f"{timeout:g} s ({e}); start process 0 first, check the address and the "
                                     f"firewall, or raise {_TIMEOUT_ENV}") from None
            time.sleep(0.2)


def maybe_initialize_distributed(environ=None) -> bool:
    """Join the multi-process job when launched as one (see the signals above); no-op otherwise.

    Call it first thing, before any JAX computation or ``jax.devices()``. Safe to call again. Returns
    whether the distributed runtime is up.
    """
    if jax.distributed.is_initialized():
        return True
    environ = os.environ if environ is None else environ
    kwargs = _distributed_kwargs(environ)
    if kwargs is None:
        return False
    timeout = _init_timeout(environ)
    address = environ.get("JAX_COORDINATOR_ADDRESS", "").strip()
    if address and kwargs.get("process_id", 0) != 0:
        # jax aborts the whole process (a C++ fatal error, no exception) when the coordinator never answers;
        # find that out first, within the same time bound, and say so.
        try:
            wait_for_coordinator(address, timeout)
        except ReadmeJaxError as e:
            raise ReadmeJaxError(f"cannot join the multi-process job: {e}") from None
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=timeout)
    except (RuntimeError, ValueError) as e:
        # RuntimeError: an earlier JAX call already started the backend; ValueError: a coordinator address
        # without a process count/id that jax could detect (set JAX_NUM_PROCESSES and JAX_PROCESS_ID).
        raise ReadmeJaxError(f"cannot join the multi-process job: {e}") from None
    return True


def print_topology() -> None:
    """One line at the start of a run: which process this is, of how many, over how many devices."""
    print(f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local of "
          f"{jax.device_count()} devices ({jax.devices()[0].platform})", flush=True)
