"""Browser GPU backend: the Device interface on the page's navigator.gpu, from Pyodide.

Hot paths are single calls into web/gpu_helper.js (registered as the JS module
`webrwkv_js`): one call encodes a whole step, one call uploads a numpy array.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Iterable, Sequence, Union

import numpy as np

from ..errors import DeviceLostError, GpuError
from .device import STORAGE, UNIFORM, Device

try:  # only importable inside Pyodide
    import js  # type: ignore[import-not-found]
    from pyodide.ffi import create_proxy, to_js  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - native Python
    js = None


def _obj(value: Any) -> Any:
    """A Python dict/list as a plain JS object/array."""
    return to_js(value, dict_converter=js.Object.fromEntries)


def _helper() -> Any:
    import webrwkv_js  # type: ignore[import-not-found]  # noqa: PLC0415

    return webrwkv_js


def adapter_description(adapter: Any) -> str:
    """A readable adapter name, e.g. "Swiftshader (google, software)"."""
    info = getattr(adapter, "info", None)
    get = lambda k: str(getattr(info, k, "") or "") if info is not None else ""  # noqa: E731
    desc, vendor, arch, dev = get("description"), get("vendor"), get("architecture"), get("device")
    name = desc or (arch[:1].upper() + arch[1:]) or dev or vendor or "WebGPU adapter"
    extra = [p for p in (vendor if name != vendor else "",) if p]
    if getattr(info, "isFallbackAdapter", False) or getattr(adapter, "isFallbackAdapter", False):
        extra.append("software")
    return f"{name} ({', '.join(extra)})" if extra else name


class BrowserDevice(Device):
    """A GPUDevice from navigator.gpu. Create it with `await BrowserDevice.open()`."""

    def __init__(self, device: Any = None, adapter: Union[str, int, None] = None, adapter_name: str = "",
                 max_binding_override: int | None = None, features: Iterable[str] = (),
                 subgroup_max_size: int = 0) -> None:
        if js is None or device is None:
            raise GpuError("the browser backend runs only inside Pyodide; open it with `await BrowserDevice.open()`")
        self._dev, self._queue, self._h = device, device.queue, _helper()
        self.adapter_name = adapter_name or "WebGPU"
        self.features = set(features)
        self.subgroups_directive = "subgroups" in self.features
        self.handle = device
        self.software = "software" in self.adapter_name or "swiftshader" in self.adapter_name.lower()
        lim = device.limits
        binding = int(lim.maxStorageBufferBindingSize)
        if max_binding_override:
            binding = min(binding, int(max_binding_override))
        self.limits = {
            "max_buffer_size": int(lim.maxBufferSize),
            "max_storage_binding": binding,
            "max_storage_buffers_per_stage": int(lim.maxStorageBuffersPerShaderStage),
            "min_storage_offset_alignment": int(lim.minStorageBufferOffsetAlignment),
            "max_workgroups_per_dim": int(lim.maxComputeWorkgroupsPerDimension),
            "max_workgroup_storage": int(lim.maxComputeWorkgroupStorageSize),
            "max_workgroup_invocations": int(lim.maxComputeInvocationsPerWorkgroup),
            "subgroup_max_size": int(subgroup_max_size) if "subgroups" in self.features else 0,
        }
        U = js.GPUBufferUsage
        self._usage = {STORAGE: U.STORAGE | U.COPY_SRC | U.COPY_DST, UNIFORM: U.UNIFORM | U.COPY_DST}
        self._progs: OrderedDict[int, tuple] = OrderedDict()
        self.lost: str | None = None
        self.errors: list[str] = []
        self.wait_s = 0.0  # seconds spent awaiting GPU results (the rest of a step is Python and JS)
        self.encode_calls = 0
        self.owned: list = []  # buffers made by this device since free_owned()
        self.js_calls = 0  # calls into JS by write/copy/encode/read (the per-step cost)
        self._proxies = [create_proxy(self._on_lost), create_proxy(self._on_error)]
        device.lost.then(self._proxies[0])
        device.addEventListener("uncapturederror", self._proxies[1])

    @classmethod
    async def open(cls, adapter: Union[str, int, None] = None, max_binding_override: int | None = None,
                   use_subgroups: bool = True) -> "BrowserDevice":
        """Request the adapter's maximum buffer and binding limits (the defaults are 128-256 MiB)."""
        gpu = getattr(js.navigator, "gpu", None)
        if not gpu:
            raise GpuError("this browser has no WebGPU: use Chrome or Edge 113+, Safari 26 or Firefox 141+ "
                           "(Windows), or enable chrome://flags/#enable-unsafe-webgpu")
        pref = "low-power" if str(adapter or "").lower() in ("low-power", "integrated") else "high-performance"
        a = await gpu.requestAdapter(_obj({"powerPreference": pref}))
        if not a:
            raise GpuError("WebGPU is present but no GPU adapter is available: update the GPU driver, or enable "
                           "chrome://flags/#enable-unsafe-webgpu (and #enable-vulkan on Linux)")
        al = a.limits
        keys = ("maxStorageBufferBindingSize", "maxBufferSize", "maxStorageBuffersPerShaderStage",
                "maxComputeWorkgroupStorageSize", "maxComputeInvocationsPerWorkgroup", "maxComputeWorkgroupSizeX")
        want = {k: int(getattr(al, k)) for k in keys}
        feats = ["subgroups"] if use_subgroups and a.features.has("subgroups") else []
        try:
            dev = await a.requestDevice(_obj({"requiredFeatures": feats, "requiredLimits": want,
                                              "label": "webrwkv"}))
        except Exception as e:  # noqa: BLE001
            raise GpuError(f"could not open the GPU device ({e}); close other GPU-heavy tabs and reload") from e
        sg = int(getattr(a.info, "subgroupMaxSize", 0) or 0)
        return cls(dev, adapter_name=adapter_description(a), max_binding_override=max_binding_override,
                   features=feats, subgroup_max_size=sg)

    # -- events --------------------------------------------------------------------
    def _on_lost(self, info: Any) -> None:
        self.lost = str(getattr(info, "message", "") or getattr(info, "reason", "") or "device lost")

    def _on_error(self, ev: Any) -> None:
        self.errors.append(str(getattr(getattr(ev, "error", None), "message", ev)))

    def _check(self) -> None:
        if self.lost is not None:
            raise DeviceLostError(f"the GPU device was lost ({self.lost}); load the model again")

    def raise_errors(self, what: str) -> None:
        """Raise the first GPU validation error reported since the last call (they arrive asynchronously)."""
        self._check()
        if self.errors:
            first, self.errors = self.errors[0], []
            raise GpuError(f"GPU error during {what}: {first}")

    # -- memory ------------------------------------------------------------------------
    def buffer(self, nbytes: int, usage: str = STORAGE, label: str = "") -> Any:
        self._check()
        nbytes = max(4, (int(nbytes) + 3) & ~3)
        if nbytes > self.limits["max_buffer_size"]:
            raise GpuError(f"buffer {label!r} of {nbytes} bytes exceeds the adapter's maxBufferSize "
                           f"({self.limits['max_buffer_size']}); use a smaller model")
        buf = self._dev.createBuffer(_obj({"size": nbytes, "usage": self._usage[usage], "label": label}))
        self.owned.append(buf)
        return buf

    def free_owned(self) -> None:
        """Destroy every buffer made since the last call (a model's whole footprint), without waiting for GC."""
        for buf in self.owned:
            self.destroy(buf)
        self.owned = []
        self._progs.clear()

    def write(self, buf: Any, offset: int, data: Any) -> None:
        self._check()
        arr = data if isinstance(data, np.ndarray) else np.frombuffer(memoryview(data).cast("B"), np.uint8)
        arr = np.ascontiguousarray(arr)
        if arr.nbytes % 4:
            arr = np.concatenate([arr.reshape(-1).view(np.uint8), np.zeros(4 - arr.nbytes % 4, np.uint8)])
        self._h.writeFromPy(self._dev, buf, int(offset), arr)
        self.js_calls += 1

    def copy(self, src: Any, src_offset: int, dst: Any, dst_offset: int, nbytes: int) -> None:
        self._check()
        self._h.copyBuffer(self._dev, src, int(src_offset), dst, int(dst_offset), int(nbytes))
        self.js_calls += 1

    async def read_async(self, buf: Any, offset: int, nbytes: int) -> bytes:
        self._check()
        t0 = time.perf_counter()
        out = await self._h.readBuffer(self._dev, buf, int(offset), int(nbytes))
        self.js_calls += 2  # the read and the bytes conversion
        self.wait_s += time.perf_counter() - t0
        self._check()
        return out.to_bytes()

    def destroy(self, buf: Any) -> None:
        try:
            buf.destroy()
        except Exception:  # noqa: BLE001
            pass

    async def sync_async(self) -> None:
        t0 = time.perf_counter()
        await self._h.onDone(self._dev)
        self.wait_s += time.perf_counter() - t0
        self._check()

    def lose(self) -> None:
        """Destroy the GPUDevice as a driver reset would (the page's recovery is tested with it)."""
        self._dev.destroy()

    def close(self) -> None:
        self._progs.clear()
        try:
            self._dev.destroy()
        except Exception:  # noqa: BLE001
            pass
        self.lost = self.lost or "device closed"

    # -- kernels -------------------------------------------------------------------------
    def _descriptor(self, wgsl: str, entry: str, constants: dict | None) -> Any:
        self._check()
        mod = self._dev.createShaderModule(_obj({"code": wgsl}))
        stage: dict = {"module": mod, "entryPoint": entry}
        if constants:
            stage["constants"] = {k: float(v) if isinstance(v, float) else int(v) for k, v in constants.items()}
        return _obj({"layout": "auto", "compute": stage})

    def pipeline(self, wgsl: str, entry: str = "main", constants: dict | None = None) -> Any:
        return self._dev.createComputePipeline(self._descriptor(wgsl, entry, constants))

    def pipeline_async(self, wgsl: str, entry: str = "main", constants: dict | None = None) -> Any:
        """createComputePipelineAsync, issued now (its promise is the awaitable): the browser compiles several
        at once, off the page's thread, while Python goes on."""
        return self._h.compileAsync(self._dev, self._descriptor(wgsl, entry, constants))

    def clock(self) -> tuple[float, float]:
        """(now, when the last pipeline_async was ready) in seconds on the page's clock (0: none yet)."""
        now, at = self._h.clock().to_py()
        return now / 1000, at / 1000

    def bind(self, pipeline: Any, entries: Sequence[Any]) -> Any:
        self._check()
        ents = []
        for i, e in enumerate(entries):
            if isinstance(e, tuple):
                b, off, size = e
                ents.append({"binding": i, "resource": {"buffer": b, "offset": int(off), "size": int(size)}})
            else:
                ents.append({"binding": i, "resource": {"buffer": e}})
        return self._dev.createBindGroup(_obj({"layout": pipeline.getBindGroupLayout(0), "entries": ents}))

    def _program(self, ops: Sequence[tuple]) -> Any:
        """The packed JS form of an op list, built once per list object (the runtime caches its lists)."""
        key = id(ops)
        hit = self._progs.get(key)
        if hit is not None and hit[0] is ops and hit[2] == len(ops):
            self._progs.move_to_end(key)
            return hit[1]
        ops_list = list(ops)
        wg = [int(v) for _, _, xyz in ops_list for v in (tuple(xyz) + (1, 1))[:3]]
        prog = self._h.registerOps(to_js([p for p, _, _ in ops_list]), to_js([g for _, g, _ in ops_list]), to_js(wg))
        self._progs[key] = (ops, prog, len(ops_list))
        if len(self._progs) > 512:
            self._progs.popitem(last=False)
        return prog

    def encode_repeat(self, parts: Sequence[Sequence[tuple]], n: int, per: int = 1) -> None:
        """One call into JS for the whole window: n steps, `per` of them in each compute pass and submit."""
        self._check()
        progs = [self._program(ops if isinstance(ops, (list, tuple)) else list(ops)) for ops in parts]
        self._h.runSteps(self._dev, to_js(progs), int(n), max(1, int(per)))
        self.encode_calls += 1
        self.js_calls += 1

    def encode(self, ops: Iterable[tuple]) -> None:
        self._check()
        if not isinstance(ops, (list, tuple)):
            ops = list(ops)
        self._h.runOps(self._dev, self._program(ops))
        self.encode_calls += 1
        self.js_calls += 1
