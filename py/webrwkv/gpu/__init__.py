"""The small GPU interface the runtime drives; backends: native.py (wgpu-py), browser.py (navigator.gpu).

Everything backend-specific goes through a `Device`. The runtime never imports
wgpu. Objects a backend returns (buffers, pipelines, bind groups) are opaque
handles the runtime only passes back to the same device.
"""

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
    """Abstract GPU device. Subclasses implement every method below.

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
    subgroup_directive : str
        Text prepended to WGSL that uses subgroup builtins ("enable subgroups;"
        in browsers, "" on wgpu-native whose compiler rejects the directive).
    """

    adapter_name: str = "?"
    limits: dict
    features: set
    subgroup_directive: str = ""

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
        """Wait for queued work and return `nbytes` from `buf` (native backends only)."""
        raise NotImplementedError

    async def read_async(self, buf: Any, offset: int, nbytes: int) -> bytes:
        """Asynchronous `read`; every backend implements it."""
        raise NotImplementedError

    def destroy(self, buf: Any) -> None:
        """Free a buffer now rather than at garbage collection."""

    # -- kernels --------------------------------------------------------------
    def pipeline(self, wgsl: str, entry: str = "main", constants: dict | None = None) -> Any:
        """Compile a compute pipeline (layout "auto", bind group 0) from WGSL source.

        `constants` fills WGSL `override` declarations. Callers cache pipelines
        (see webrwkv.kernels); backends need not.
        """
        raise NotImplementedError

    def bind(self, pipeline: Any, entries: Sequence[Binding]) -> Any:
        """Make a bind group for group 0 of `pipeline`; entry i goes to @binding(i)."""
        raise NotImplementedError

    def encode(self, ops: Iterable[Op]) -> None:
        """Record `ops` [(pipeline, bind_group, (x, y, z)), ...] in ONE compute pass and submit.

        This is the hot path of every step: backends keep it a tight loop
        (in the browser, one call into a JS helper walking a prebuilt array).
        """
        raise NotImplementedError

    def sync(self) -> None:
        """Block until all queued work has finished (native backends only)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the device."""


def open_device(backend: str = "native", adapter: Union[str, int, None] = None, **options: Any) -> Device:
    """Open a device on `backend` ("native" = wgpu-py). `adapter` is a name substring or index."""
    if backend == "native":
        from .native import NativeDevice

        return NativeDevice(adapter=adapter, **options)
    if backend == "browser":
        from .browser import BrowserDevice  # type: ignore[import-not-found]

        return BrowserDevice(adapter=adapter, **options)
    from ..errors import GpuError

    raise GpuError(f"unknown GPU backend {backend!r}; use 'native' or 'browser'")


__all__ = ["Device", "open_device", "STORAGE", "UNIFORM", "LIMIT_KEYS", "Binding", "Op"]
