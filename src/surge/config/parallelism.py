"""HF Accelerate's ``ParallelismConfig``: the sizes of the device mesh's dimensions.

The fields, their checks, the dimension names and the mesh it builds follow Accelerate
1.15 (itself modelled on torchtitan's ``ParallelDims``): ``dp_replicate``, ``dp_shard``,
``cp``, ``sp``, ``tp`` in that order, with ``dp`` (the data-parallel dims), ``dp_shard_cp``
and ``dp_cp`` flattened from them. Sizes (and backends) left as None are read, as
Accelerate reads them, from the ``PARALLELISM_CONFIG_*`` environment variables its launcher
and surge's set for the workers (so a script's bare ``ParallelismConfig()`` takes the
launch's sizes), else 1. An Accelerator given no config builds one from the config file's
sizes: see ``surge.config.resolve.settle_parallelism``.

What runs: ``dp_replicate x dp_shard`` under an FSDP plugin is FSDP2's HYBRID_SHARD mesh;
without a sharding plugin the job is DDP over every process (the same numbers).
``tp_size`` above 1 under an FSDP plugin is tensor parallelism composed with FSDP2
(strategies/tensor_parallel.py). ``sp_size`` above 1 is Ulysses sequence parallelism
(surge.parallel.ulysses) under any strategy: see [Note: sequence parallelism in the
Accelerator] in surge/parallel/wiring.py. ``cp_size`` above 1 is torch's ring attention
inside ``accelerator.maybe_context_parallel`` under any strategy, on CUDA and CPU: see
[Note: context parallelism in the Accelerator] in surge/parallel/context.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from surge.config._validate import check_int

_MESH_ORDER = ("dp_replicate", "dp_shard", "cp", "sp", "tp")
_SP_ATTENTION = ("sdpa",)


@dataclass
class TorchTensorParallelConfig:
    """Accelerate's tensor-parallel settings (``ParallelismConfig(tp_handler=...)``)."""

    enable_async_tp: bool = False
    """torch's asynchronous tensor parallelism (CUDA, compiled); not used on the CPU."""
    loss_parallel: bool = False
    """surge's addition: compute the cross-entropy on the vocabulary-split logits (torch's
    ``loss_parallel``) instead of gathering them first. The output head (transformers'
    ``get_output_embeddings()``) then returns logits as a DTensor split over the vocabulary;
    the model's own loss (``labels=``) and ``accelerator.backward`` run under the context.
    A loss computed outside the model needs ``torch.distributed.tensor.parallel.loss_parallel()``
    around it."""


@dataclass
class TorchContextParallelConfig:
    """Accelerate's context-parallel settings (``ParallelismConfig(cp_handler=...)``)."""

    cp_comm_strategy: str | None = None
    """How ring attention exchanges keys and values: "allgather" or "alltoall". None: the
    ``PARALLELISM_CONFIG_CP_COMM_STRATEGY`` environment variable, else "allgather" (as
    Accelerate)."""

    def __post_init__(self) -> None:
        if self.cp_comm_strategy is None:
            import os

            self.cp_comm_strategy = os.environ.get("PARALLELISM_CONFIG_CP_COMM_STRATEGY", "allgather")
        if self.cp_comm_strategy not in ("allgather", "alltoall"):
            raise ValueError(f"cp_comm_strategy={self.cp_comm_strategy!r} must be 'allgather' or 'alltoall'.")


@dataclass
class DeepSpeedSequenceParallelConfig:
    """Accelerate's Ulysses settings (``ParallelismConfig(sp_handler=...)``).

    surge's Ulysses splits each batch along the sequence whatever its length (the
    length must divide by ``sp_size``), so ``sp_seq_length`` is only checked.
    """

    sp_seq_length: int | None = None
    """The sequence length when every batch has the same one (checked on each batch
    when ``sp_seq_length_is_variable`` is False)."""
    sp_seq_length_is_variable: bool | None = None
    """True (the default): batches may have different lengths."""
    sp_attn_implementation: str | None = None
    """The attention Ulysses runs on each rank's heads: "sdpa" (the default)."""

    def __post_init__(self) -> None:
        if self.sp_seq_length_is_variable is None:
            self.sp_seq_length_is_variable = True
        if not self.sp_seq_length_is_variable and self.sp_seq_length is None:
            raise ValueError("DeepSpeedSequenceParallelConfig(sp_seq_length_is_variable=False) needs sp_seq_length "
                             "(the length of every batch's sequences).")
        if self.sp_attn_implementation is None:
            self.sp_attn_implementation = "sdpa"
        if self.sp_attn_implementation not in _SP_ATTENTION:
            raise ValueError(f"sp_attn_implementation={self.sp_attn_implementation!r}: surge's Ulysses runs "
                             f"{list(_SP_ATTENTION)} on each rank's heads (flash attention under Ulysses is not "
                             "built yet); use 'sdpa'.")


@dataclass
class ParallelismConfig:
    """The parallel dimensions of a job (Accelerate's ``ParallelismConfig``).

    ``dp_replicate_size == 1`` and ``dp_shard_size > 1`` is FSDP; both above 1 is HSDP
    (shard within a group, replicate across groups). ``total_size`` (the product of every
    size) must equal the number of processes; an all-ones config on several processes
    becomes ``dp_replicate_size = num_processes`` (Accelerate's rule).

    Example:
        >>> from surge import Accelerator, ParallelismConfig, FullyShardedDataParallelPlugin
        >>> pc = ParallelismConfig(dp_replicate_size=2, dp_shard_size=2)  # 4 processes: HSDP
        >>> fsdp = FullyShardedDataParallelPlugin()
        >>> accelerator = Accelerator(parallelism_config=pc, fsdp_plugin=fsdp)  # doctest: +SKIP
        >>> accelerator.torch_device_mesh.mesh_dim_names  # doctest: +SKIP
        ('dp_replicate', 'dp_shard')
    """

    dp_replicate_size: int | None = None
    """Data-parallel groups that hold whole (or hybrid-sharded) replicas; None: 1."""
    dp_shard_size: int | None = None
    """Processes that shard the model's parameters, gradients and optimizer state; None: 1."""
    tp_size: int | None = None
    """Tensor-parallel degree; None: 1. Above 1 needs an FSDP plugin (FSDP2 x TP)."""
    cp_size: int | None = None
    """Context-parallel degree; None: 1. Above 1: ring attention inside
    ``accelerator.maybe_context_parallel`` (the cp group reads the same batches)."""
    cp_backend: str | None = None
    """The context-parallel backend: "torch" (the default)."""
    sp_size: int | None = None
    """Sequence-parallel (Ulysses) degree; None: 1. The processes of an sp group read the
    same batches, each a contiguous part of every sequence."""
    sp_backend: str | None = None
    """The sequence-parallel backend: "deepspeed" (the default, Accelerate's name for ALST/Ulysses)."""
    tp_handler: Any = None
    """Tensor-parallel settings (Accelerate's ``TorchTensorParallelConfig``)."""
    cp_handler: Any = None
    """Context-parallel settings (Accelerate's ``TorchContextParallelConfig``)."""
    sp_handler: Any = None
    """Sequence-parallel settings (Accelerate's ``DeepSpeedSequenceParallelConfig``)."""
    tp_plan: dict[str, Any] | None = None
    """surge's addition: module-name patterns ("layers.*.mlp.up_proj") to torch
    ``ParallelStyle`` objects or transformers' style strings ("colwise", "rowwise", ...).
    None: the model's own plan (``config.base_model_tp_plan`` / ``_tp_plan``)."""
    device_mesh: Any = field(default=None, repr=False, compare=False)
    """The ``DeviceMesh`` built by :meth:`get_device_mesh` (None until then)."""
    from_environment: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)
    """surge's addition: the sizes read from ``PARALLELISM_CONFIG_*_SIZE`` (left unset here)."""

    def __post_init__(self) -> None:
        import os

        problems = []
        for dim in ("dp_replicate", "dp_shard", "tp", "cp", "sp"):
            value = getattr(self, f"{dim}_size")
            if value is None:  # Accelerate's rule: the launcher's PARALLELISM_CONFIG_*_SIZE, else 1
                text = os.environ.get(f"PARALLELISM_CONFIG_{dim.upper()}_SIZE", "1")
                value = int(text) if text.strip().lstrip("-").isdigit() else text
                if value != 1:
                    self.from_environment += (f"{dim}_size",)
            try:
                setattr(self, f"{dim}_size", check_int(f"{dim}_size", value, minimum=1))
            except (TypeError, ValueError) as error:
                problems.append(str(error))
        if problems:
            raise ValueError("ParallelismConfig: " + " ".join(problems))
        if self.cp_backend is None:
            self.cp_backend = os.environ.get("PARALLELISM_CONFIG_CP_BACKEND", "torch")
        if self.sp_backend is None:
            self.sp_backend = os.environ.get("PARALLELISM_CONFIG_SP_BACKEND", "deepspeed")
        if self.cp_backend != "torch":
            raise ValueError(f"cp_backend must be one of ['torch'], but got {self.cp_backend!r}.")
        if self.sp_backend != "deepspeed":
            raise ValueError(f"sp_backend must be one of ['deepspeed'], but got {self.sp_backend!r}.")
        if self.sp_enabled and self.sp_handler is None:
            self.sp_handler = DeepSpeedSequenceParallelConfig()
        if self.cp_enabled and self.cp_handler is None:
            self.cp_handler = TorchContextParallelConfig()  # PARALLELISM_CONFIG_CP_COMM_STRATEGY, as Accelerate
        if self.cp_enabled and not isinstance(self.cp_handler, TorchContextParallelConfig):
            raise TypeError(f"cp_handler={self.cp_handler!r} must be a TorchContextParallelConfig (cp_backend "
                            "'torch').")
        if self.cp_enabled and self.sp_enabled:
            raise ValueError(f"Context parallelism and sequence parallelism are mutually exclusive: got "
                             f"cp_size={self.cp_size} and sp_size={self.sp_size}. Set one of them to 1.")
        if (self.tp_enabled or self.cp_enabled) and self.dp_replicate_enabled and not self.dp_shard_enabled:
            raise ValueError(
                f"tp_size={self.tp_size} / cp_size={self.cp_size} cannot be composed with pure data parallelism "
                f"(dp_replicate_size={self.dp_replicate_size}, dp_shard_size=1): set dp_shard_size > 1 (and "
                "dp_replicate_size=1) for FSDP + TP/CP, or both above 1 for HSDP + TP/CP.")

    # -- sizes -----------------------------------------------------------------------------

    @property
    def _sizes(self) -> dict[str, int]:
        return {"dp_replicate": self.size("dp_replicate"), "dp_shard": self.size("dp_shard"),
                "tp": self.size("tp"), "cp": self.size("cp"), "sp": self.size("sp")}

    def size(self, dim: str) -> int:
        """The size of dimension ``dim`` ("dp_replicate", "dp_shard", "tp", "cp" or "sp")."""
        value = getattr(self, f"{dim}_size")
        assert isinstance(value, int)  # settled in __post_init__
        return value

    @property
    def total_size(self) -> int:
        """The product of every size: the number of processes the config needs."""
        total = 1
        for size in self._sizes.values():
            total *= size
        return total

    @property
    def data_parallel_size(self) -> int:
        """``dp_replicate_size * dp_shard_size``: the processes that see different batches."""
        return self.size("dp_replicate") * self.size("dp_shard")

    @property
    def non_data_parallel_size(self) -> int:
        """``tp_size * cp_size * sp_size``: the processes that see the same batch."""
        return self.size("tp") * self.size("cp") * self.size("sp")

    @property
    def dp_replicate_enabled(self) -> bool:
        return self.size("dp_replicate") > 1

    @property
    def dp_shard_enabled(self) -> bool:
        return self.size("dp_shard") > 1

    @property
    def tp_enabled(self) -> bool:
        return self.size("tp") > 1

    @property
    def cp_enabled(self) -> bool:
        return self.size("cp") > 1

    @property
    def sp_enabled(self) -> bool:
        return self.size("sp") > 1

    # -- dimension names (Accelerate's) ----------------------------------------------------

    @property
    def dp_dim_names(self) -> list[str]:
        """The enabled data-parallel dimensions (flattened into ``dp``)."""
        return [d for d in ("dp_replicate", "dp_shard") if self.size(d) > 1]

    @property
    def non_dp_dim_names(self) -> list[str]:
        """The enabled dimensions whose processes receive the same batch."""
        return [d for d in ("tp", "cp", "sp") if self.size(d) > 1]

    @property
    def dp_shard_cp_dim_names(self) -> list[str]:
        """The enabled dimensions FSDP shards over (flattened into ``dp_shard_cp``)."""
        return [d for d in ("dp_shard", "cp") if self.size(d) > 1]

    @property
    def dp_cp_dim_names(self) -> list[str]:
        """The enabled dimensions the loss is averaged over (flattened into ``dp_cp``)."""
        return [d for d in ("dp_replicate", "dp_shard", "cp") if self.size(d) > 1]

    @property
    def shard_size(self) -> int:
        """The processes FSDP shards over (and averages gradients over) in one replica:
        ``dp_shard * cp * sp`` (sequence- and context-parallel ranks hold parts of the
        same sequences, so their gradients average like data-parallel ones)."""
        return self.size("dp_shard") * self.size("cp") * self.size("sp")

    @property
    def fsdp_dim_names(self) -> list[str]:
        """The mesh dimensions FSDP is applied over (replication included)."""
        return (["dp_replicate"] if self.dp_replicate_enabled else []) + ["dp_shard_cp"]

    @property
    def active_mesh_dims(self) -> list[str]:
        """Every enabled dimension's name."""
        return self.dp_dim_names + self.non_dp_dim_names

    def mesh_layout(self) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """The enabled dimensions' names and sizes in mesh order (dp_replicate, dp_shard,
        cp, sp, tp: tp innermost, so its processes are neighbours). Pure."""
        sizes = self._sizes
        names = tuple(d for d in _MESH_ORDER if sizes[d] > 1)
        return names, tuple(sizes[d] for d in names)

    # -- the mesh --------------------------------------------------------------------------

    def build_device_mesh(self, device_type: str) -> Any:
        """A new ``DeviceMesh`` over every process (needs the process group), with the
        flattened ``dp``, ``dp_shard_cp`` and ``dp_cp`` dimensions; None when every size is
        1. Every process must call it (it creates process groups)."""
        names, shape = self.mesh_layout()
        if not names:
            return None
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device_type, shape, mesh_dim_names=names)
        for flat, dims in (("dp", self.dp_dim_names), ("dp_shard_cp", self.dp_shard_cp_dim_names),
                           ("dp_cp", self.dp_cp_dim_names)):
            if dims:
                mesh[tuple(dims)]._flatten(flat)
        return mesh

    def get_device_mesh(self, device_type: str | None = None) -> Any:
        """The mesh, built on first call (then ``device_type`` is needed).

        Raises:
            ValueError: no mesh yet and no ``device_type``, or a mesh of another device type.
        """
        if self.device_mesh is None:
            if device_type is None:
                raise ValueError("get_device_mesh needs a device_type (e.g. 'cuda') to build the mesh.")
            self.device_mesh = self.build_device_mesh(device_type)
        elif device_type is not None and self.device_mesh.device_type != device_type:
            raise ValueError(f"The device mesh was built for {self.device_mesh.device_type!r}, not {device_type!r}.")
        return self.device_mesh

    def to_json(self) -> dict[str, Any]:
        """The sizes and backends (no mesh, no handlers)."""
        return {"dp_replicate_size": self.dp_replicate_size, "dp_shard_size": self.dp_shard_size,
                "tp_size": self.tp_size, "cp_size": self.cp_size, "cp_backend": self.cp_backend,
                "sp_size": self.sp_size, "sp_backend": self.sp_backend}
