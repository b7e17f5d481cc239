"""The Device base class: the small GPU interface the engine drives, with a default for every method a
backend need not change. Objects a backend returns (buffers, pipelines, bind groups) are opaque handles
the engine only passes back to the same device."""

from __future__ import annotations

from typing import Any, Iterable, Sequence, Union

# Buffer usages the runtime asks for (a backend maps them to its own flags):
#   "storage"  storage | copy_src | copy_dst  (weights, activations, state, logits)
#   "uniform"  uniform | copy_dst
STORAGE = "storage"
UNIFORM = "uniform"

# Normalised limit keys every backend fills in `Device.limits` (bytes / counts):
LIMIT_KEYS = (
    "max_buffer_size",                 # largest single buffer
    "max_storage_binding",             # largest storage-buffer binding (split matrices above it)
    "max_storage_buffers_per_stage",   # storage buffers one kernel may bind
    "min_storage_offset_alignment",    # binding offsets must be multiples of this
    "max_workgroups_per_dim",          # dispatch size limit per dimension
    "max_workgroup_storage",           # bytes of var<workgroup> memory
    "max_workgroup_invocations",       # threads per workgroup
    "subgroup_max_size",               # largest subgroup size (0 when unknown or no subgroups)
)

# A binding entry: a whole buffer, or (buffer, offset_bytes, size_bytes).
Binding = Union[Any, tuple]
# One recorded dispatch: (pipeline, bind_group, (x, y, z) workgroups).
Op = tuple


class Device:
    """The GPU device the engine drives. Backends implement the memory and kernel methods; every other
    method has a default here that fits a backend with nothing special to do.

    Attributes
    ----------
    adapter_name : str
        Human-readable adapter description, e.g. "NVIDIA H100 (Vulkan)".
    limits : dict[str, int]
        The granted limits, keyed by LIMIT_KEYS. Backends request the adapter's
        maxima for buffer size, storage binding size and storage buffers per
        stage. `max_binding_override` (constructor option of the backends)
        lowers "max_storage_binding" to test row-block splitting.
    features : set[str]
        Normalised feature names; "subgroups" when subgroup operations
        (subgroupAdd, ...) are usable in WGSL. "shader-f16" is never required.
    subgroups_directive : bool
        Whether WGSL that uses subgroup builtins must start with `enable subgroups;`
        (browsers: yes; wgpu-native's compiler rejects the directive).
    lost : str | None
        Why the device was lost, once it is.
    wait_s, js_calls : float, int
        Time spent waiting for GPU results and calls into JS (the browser counts them; a decode
        step's cost outside the GPU).
    handle : Any
        The backend's own device object (the browser's GPUDevice, for JS code that writes into
        the engine's buffers), or None.
    software : bool
        The adapter runs on the CPU (Mesa lavapipe, SwiftShader): kernels size their workgroups for it.
    """

    adapter_name: str = "?"
    limits: dict
    features: set
    subgroups_directive: bool = False
    lost: str | None = None
    wait_s: float = 0.0
    js_calls: int = 0
    handle: Any = None
    software: bool = False

    @property
    def pipeline_cache(self) -> dict:
        """Compiled pipelines by kernel and template values; runtimes on one device share them."""
        cache = self.__dict__.get("_pipeline_cache")
        if cache is None:
            cache = self.__dict__["_pipeline_cache"] = {}
        return cache

    # -- memory ---------------------------------------------------------------
    def buffer(self, nbytes: int, usage: str = STORAGE, label: str = "") -> Any:
        """Allocate a zero-filled buffer of `nbytes` (rounded up to 4)."""
        raise NotImplementedError

    def write(self, buf: Any, offset: int, data: Union[bytes, bytearray, memoryview, Any]) -> None:
        """Queue a write of `data` (bytes-like or a contiguous numpy array) at byte `offset`.

        Ordered before any later `encode`/`copy` on the same device.
        """
        raise NotImplementedError

    def copy(self, src: Any, src_offset: int, dst: Any, dst_offset: int, nbytes: int) -> None:
        """Queue a buffer-to-buffer copy (src and dst must be different buffers)."""
        raise NotImplementedError

    def read(self, buf: Any, offset: int, nbytes: int) -> bytes:
        """Wait for queued work and return `nbytes` from `buf` (backends that can block)."""
        from ..errors import GpuError

        raise GpuError(f"{type(self).__name__} cannot read GPU buffers synchronously: use `await read_async(...)`")

    async def read_async(self, buf: Any, offset: int, nbytes: int) -> bytes:
        """Asynchronous `read`; every backend has it."""
        return self.read(buf, offset, nbytes)

    def destroy(self, buf: Any) -> None:
        """Free a buffer now rather than at garbage collection."""

    def free_owned(self) -> None:
        """Free every buffer made since the last call (a model's whole footprint), where the backend
        keeps track of them."""

    # -- kernels --------------------------------------------------------------
    def pipeline(self, wgsl: str, entry: str = "main", constants: dict | None = None) -> Any:
        """Compile a compute pipeline (layout "auto", bind group 0) from WGSL source.

        `constants` fills WGSL `override` declarations. Callers cache pipelines
        (see webrwkv.kernels); backends need not.
        """
        raise NotImplementedError

    async def pipeline_async(self, wgsl: str, entry: str = "main", constants: dict | None = None) -> Any:
        """An awaitable `pipeline`, compiled without blocking where the backend can (several compile in
        parallel; the browser's starts when this is called)."""
        return self.pipeline(wgsl, entry, constants)

    def bind(self, pipeline: Any, entries: Sequence[Binding]) -> Any:
        """Make a bind group for group 0 of `pipeline`; entry i goes to @binding(i)."""
        raise NotImplementedError

    def encode(self, ops: Iterable[Op]) -> None:
        """Record `ops` [(pipeline, bind_group, (x, y, z)), ...] in ONE compute pass and submit.

        This is the hot path of every step: backends keep it a tight loop
        (in the browser, one call into a JS helper walking a prebuilt array).
        """
        raise NotImplementedError

    def encode_repeat(self, parts: Sequence[Sequence[Op]], n: int, per: int = 1) -> None:
        """Submit the op lists `parts` (one step) n times in a row: a window of decode steps. Backends that
        record several steps in one compute pass put `per` steps in each submit; this default submits each
        part of each step on its own."""
        for _ in range(n):
            for ops in parts:
                self.encode(ops)

    # -- synchronisation and errors -------------------------------------------
    def sync(self) -> None:
        """Block until all queued work has finished: a 4-byte read of a small buffer."""
        buf = self.__dict__.get("_sync_buf")
        if buf is None:
            buf = self.__dict__["_sync_buf"] = self.buffer(4, label="sync")
        self.read(buf, 0, 4)

    async def sync_async(self) -> None:
        """Wait until all queued work has finished."""
        self.sync()

    def raise_errors(self, what: str) -> None:
        """Raise DeviceLostError if the device is lost, or the first GPU error reported since the last
        call by backends whose errors arrive asynchronously; `what` says what was being done."""
        if self.lost is not None:
            from ..errors import DeviceLostError

            raise DeviceLostError(f"the GPU device was lost ({self.lost}) during {what}; load the model again")

    def lose(self) -> None:
        """Destroy the device now, as a driver reset would (to test recovery)."""
        self.close()
        self.lost = self.lost or "device destroyed"

    def close(self) -> None:
        """Release the device."""


class Recorded:
    """A kernel a RecordingDevice was asked to compile."""

    def __init__(self, wgsl: str, entry: str, constants: dict | None) -> None:
        self.wgsl, self.entry, self.constants = wgsl, entry, constants


class RecordingDevice(Device):
    """A stand-in for `like` that does nothing but record the kernels asked of it (in pipeline_cache,
    under the keys the kernel loader uses), so they can be compiled ahead on the real device."""

    def __init__(self, like: Device) -> None:
        self.adapter_name, self.limits, self.features = like.adapter_name, dict(like.limits), set(like.features)
        self.subgroups_directive, self.software = like.subgroups_directive, like.software

    def buffer(self, nbytes: int, usage: str = STORAGE, label: str = "") -> Any:
        return ("buffer", int(nbytes), label)

    def write(self, buf: Any, offset: int, data: Any) -> None:
        pass

    def copy(self, src: Any, src_offset: int, dst: Any, dst_offset: int, nbytes: int) -> None:
        pass

    def read(self, buf: Any, offset: int, nbytes: int) -> bytes:
        return bytes(nbytes)

    def pipeline(self, wgsl: str, entry: str = "main", constants: dict | None = None) -> Any:
        return Recorded(wgsl, entry, constants)

    def bind(self, pipeline: Any, entries: Sequence[Binding]) -> Any:
        return None

    def encode(self, ops: Iterable[Op]) -> None:
        pass
