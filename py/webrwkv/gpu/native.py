"""Native GPU backend on wgpu-py (Vulkan / Metal / D3D12; Mesa lavapipe on CPU-only machines)."""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Sequence, Union

from ..errors import DeviceLostError, GpuError
from .device import STORAGE, Device

# wgpu-native logs to XDG_RUNTIME_DIR when it is unset; give it a harmless default.
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
WRITE_SLICE = 32 << 20  # bytes per queue write of a large upload


def _wgpu():
    try:
        import wgpu  # noqa: PLC0415
    except ImportError as e:  # pragma: no cover - depends on the install
        raise GpuError("the native backend needs the 'wgpu' package: pip install 'webrwkv[native]'") from e
    return wgpu


def list_adapters() -> list:
    """All adapters wgpu can see, best first (discrete GPUs, then others; Vulkan preferred)."""
    wgpu = _wgpu()
    try:
        adapters = list(wgpu.gpu.enumerate_adapters_sync())
    except Exception as e:  # noqa: BLE001
        raise GpuError(f"could not enumerate GPU adapters ({e}); install a Vulkan driver (e.g. mesa-vulkan-drivers)") from e
    rank = {"DiscreteGPU": 0, "IntegratedGPU": 1, "VirtualGPU": 2, "CPU": 3}
    backend_rank = {"Vulkan": 0, "Metal": 0, "D3D12": 1}
    return sorted(adapters, key=lambda a: (rank.get(a.info.get("adapter_type", ""), 4),
                                           backend_rank.get(a.info.get("backend_type", ""), 2)))


def _describe(a: Any) -> str:
    i = a.info
    return f"{i.get('device', '?')} ({i.get('backend_type', '?')}, {i.get('adapter_type', '?')})"


def _is_compute_capable(a: Any) -> bool:
    return a.info.get("backend_type") in ("Vulkan", "Metal", "D3D12") and a.limits.get("max-storage-buffers-per-shader-stage", 0) >= 8


def pick_adapter(adapter: Union[str, int, None] = None) -> Any:
    """Choose an adapter by index (into list_adapters()), by name substring, or the best one."""
    adapters = list_adapters()
    names = [_describe(a) for a in adapters]
    if adapter is None or adapter == "":
        usable = [a for a in adapters if _is_compute_capable(a)]
        if not usable:
            raise GpuError("no usable GPU adapter (Vulkan/Metal/D3D12) found; install a Vulkan driver "
                           "such as mesa-vulkan-drivers (lavapipe) or use --backend reference")
        return usable[0]
    if isinstance(adapter, int) or str(adapter).isdigit():
        idx = int(adapter)
        if not 0 <= idx < len(adapters):
            raise GpuError(f"adapter index {idx} out of range; `webrwkv devices` lists {len(adapters)} adapter(s)")
        return adapters[idx]
    hits = [a for a, n in zip(adapters, names) if str(adapter).lower() in n.lower()]
    if not hits:
        raise GpuError(f"no adapter matches {adapter!r}; available: {names}")
    return hits[0]


class NativeDevice(Device):
    """A wgpu-py device with the adapter's maximum buffer/binding limits.

    Options: `max_binding_override` lowers the storage-binding limit (to test
    row-block splitting); `use_subgroups=False` hides the subgroups feature.
    """

    def __init__(self, adapter: Union[str, int, None] = None, max_binding_override: int | None = None,
                 use_subgroups: bool = True) -> None:
        wgpu = self._wgpu = _wgpu()
        a = pick_adapter(adapter)
        al = a.limits
        want = {k: al[k] for k in ("max-storage-buffer-binding-size", "max-buffer-size",
                                   "max-storage-buffers-per-shader-stage", "max-compute-workgroup-storage-size",
                                   "max-compute-invocations-per-workgroup", "max-compute-workgroup-size-x")}
        feats = []
        if use_subgroups and "subgroup" in a.features:
            feats.append("subgroup")
        try:
            self._dev = a.request_device_sync(required_features=feats, required_limits=want)
        except Exception as e:  # noqa: BLE001
            raise GpuError(f"could not open a device on {_describe(a)}: {e}") from e
        self.adapter_name = _describe(a)
        self.adapter_type = a.info.get("adapter_type", "")
        self.software = self.adapter_type == "CPU"
        self.features = {"subgroups"} if feats else set()
        lim = self._dev.limits
        binding = lim["max-storage-buffer-binding-size"]
        if max_binding_override:
            binding = min(binding, int(max_binding_override))
        self.limits = {
            "max_buffer_size": lim["max-buffer-size"],
            "max_storage_binding": binding,
            "max_storage_buffers_per_stage": lim["max-storage-buffers-per-shader-stage"],
            "min_storage_offset_alignment": lim["min-storage-buffer-offset-alignment"],
            "max_workgroups_per_dim": lim["max-compute-workgroups-per-dimension"],
            "max_workgroup_storage": lim["max-compute-workgroup-storage-size"],
            "max_workgroup_invocations": lim["max-compute-invocations-per-workgroup"],
            "subgroup_max_size": int(a.info.get("subgroup_max_size", a.info.get("stackgroup_max_size", 0)) or 0)
            if feats else 0,
        }
        self._queue = self._dev.queue
        self.handle = self._dev
        self._usage = {
            STORAGE: wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC | wgpu.BufferUsage.COPY_DST,
            "uniform": wgpu.BufferUsage.UNIFORM | wgpu.BufferUsage.COPY_DST,
        }
        self._raw: dict = {}
        from wgpu.backends.wgpu_native._ffi import ffi, lib  # noqa: PLC0415

        self._ffi = ffi
        self._set_pipeline = lib.wgpuComputePassEncoderSetPipeline
        self._set_group = lib.wgpuComputePassEncoderSetBindGroup
        self._dispatch = lib.wgpuComputePassEncoderDispatchWorkgroups

    # -- error mapping ----------------------------------------------------------
    def _check(self) -> None:
        if self.lost is not None:
            raise DeviceLostError(f"the GPU device was lost ({self.lost}); recreate the engine")

    def _fail(self, e: Exception, what: str) -> GpuError:
        msg = str(e).strip()
        low = msg.lower()
        if self.lost is not None or "lost" in low or "destroyed" in low:
            self.lost = self.lost or (msg.splitlines()[0] if msg else "device lost")
            return DeviceLostError(f"the GPU device was lost during {what}: {self.lost}; recreate the engine")
        return GpuError(f"GPU error during {what}: {msg}")

    # -- memory -------------------------------------------------------------------
    def buffer(self, nbytes: int, usage: str = STORAGE, label: str = "") -> Any:
        self._check()
        nbytes = max(4, (int(nbytes) + 3) & ~3)
        if nbytes > self.limits["max_buffer_size"]:
            raise GpuError(f"buffer {label!r} of {nbytes} bytes exceeds the adapter's maxBufferSize "
                           f"({self.limits['max_buffer_size']}); use a smaller model or quantization")
        try:
            return self._dev.create_buffer(size=nbytes, usage=self._usage[usage], label=label)
        except Exception as e:  # noqa: BLE001
            raise self._fail(e, f"allocating {label or 'a buffer'} ({nbytes} bytes)") from e

    def write(self, buf: Any, offset: int, data: Any) -> None:
        self._check()
        mv = memoryview(data).cast("B")
        try:
            # Large writes go in slices, each submitted: wgpu then reuses its staging memory instead of
            # holding a copy of everything until the next submit, and copies one slice while the next is staged.
            for o in range(0, len(mv), WRITE_SLICE):
                self._queue.write_buffer(buf, int(offset) + o, mv[o: o + WRITE_SLICE])
                if len(mv) > WRITE_SLICE:
                    self._queue.submit([])
        except Exception as e:  # noqa: BLE001
            raise self._fail(e, "a buffer write") from e

    def copy(self, src: Any, src_offset: int, dst: Any, dst_offset: int, nbytes: int) -> None:
        self._check()
        try:
            enc = self._dev.create_command_encoder()
            enc.copy_buffer_to_buffer(src, int(src_offset), dst, int(dst_offset), int(nbytes))
            self._queue.submit([enc.finish()])
        except Exception as e:  # noqa: BLE001
            raise self._fail(e, "a buffer copy") from e

    def read(self, buf: Any, offset: int, nbytes: int) -> bytes:
        self._check()
        try:
            return bytes(self._queue.read_buffer(buf, int(offset), int(nbytes)))
        except Exception as e:  # noqa: BLE001
            raise self._fail(e, "a buffer read") from e

    async def read_async(self, buf: Any, offset: int, nbytes: int) -> bytes:
        return self.read(buf, offset, nbytes)

    def destroy(self, buf: Any) -> None:
        try:
            buf.destroy()
        except Exception:  # noqa: BLE001
            pass

    def close(self) -> None:
        try:
            self._dev.destroy()
        except Exception:  # noqa: BLE001
            pass
        self.lost = self.lost or "device closed"

    def lose(self) -> None:
        """Destroy the device now, as a driver reset would (for tests of DeviceLostError)."""
        self._dev.destroy()
        self.lost = "device destroyed"

    # -- kernels ------------------------------------------------------------------
    def pipeline(self, wgsl: str, entry: str = "main", constants: dict | None = None) -> Any:
        self._check()
        try:
            mod = self._dev.create_shader_module(code=wgsl)
            stage = {"module": mod, "entry_point": entry}
            if constants:
                stage["constants"] = dict(constants)
            return self._dev.create_compute_pipeline(layout="auto", compute=stage)
        except Exception as e:  # noqa: BLE001
            raise self._fail(e, f"compiling kernel {entry!r}") from e

    def bind(self, pipeline: Any, entries: Sequence[Any]) -> Any:
        self._check()
        ents = []
        for i, e in enumerate(entries):
            if isinstance(e, tuple):
                b, off, size = e
                ents.append({"binding": i, "resource": {"buffer": b, "offset": int(off), "size": int(size)}})
            else:
                ents.append({"binding": i, "resource": {"buffer": e, "offset": 0, "size": e.size}})
        try:
            return self._dev.create_bind_group(layout=pipeline.get_bind_group_layout(0), entries=ents)
        except Exception as e:  # noqa: BLE001
            raise self._fail(e, "creating a bind group") from e

    def _raw_ops(self, ops: Sequence[tuple]) -> list:
        """The raw wgpu-native handles of a reused op list (cached by identity: wgpu-py's wrappers allocate per
        call, so the hot path calls the library directly)."""
        raw = self._raw.get(id(ops))
        if raw is None or raw[0] is not ops:
            raw = (ops, [(p._internal, g._internal, x, y, z) for p, g, (x, y, z) in ops])
            if len(self._raw) > 1024:
                self._raw.clear()
            self._raw[id(ops)] = raw
        return raw[1]

    def _submit(self, lists: Sequence[list]) -> None:
        """Record the raw op lists in ONE compute pass and submit it."""
        try:
            enc = self._dev.create_command_encoder()
            cp = enc.begin_compute_pass()
            h, null = cp._internal, self._ffi.NULL
            set_pipeline, set_group, dispatch = self._set_pipeline, self._set_group, self._dispatch
            for raw in lists:
                last = None
                for pipe, group, x, y, z in raw:
                    if pipe != last:
                        set_pipeline(h, pipe)
                        last = pipe
                    set_group(h, 0, group, 0, null)
                    dispatch(h, x, y, z)
            cp.end()
            self._queue.submit([enc.finish()])
        except Exception as e:  # noqa: BLE001
            raise self._fail(e, "encoding a step") from e

    def encode(self, ops: Iterable[tuple]) -> None:
        self._check()
        if not isinstance(ops, (list, tuple)):
            ops = list(ops)
        self._submit([self._raw_ops(ops)])

    def encode_repeat(self, parts: Sequence[Sequence[tuple]], n: int, per: int = 1) -> None:
        """A window of n steps: `per` steps in each compute pass and submit (per 1: each part its own)."""
        self._check()
        raws = [self._raw_ops(ops) for ops in parts]
        if per <= 1:
            for _ in range(n):
                for raw in raws:
                    self._submit([raw])
            return
        for k in range(0, n, per):
            self._submit(raws * min(per, n - k))


def devices_main(args: Any) -> int:
    """`webrwkv devices`: list adapters with their index, type and limits."""
    rows = []
    for i, a in enumerate(list_adapters()):
        lim = a.limits
        rows.append({
            "index": i, "name": _describe(a), "type": a.info.get("adapter_type", ""),
            "backend": a.info.get("backend_type", ""), "usable": _is_compute_capable(a),
            "max_buffer_size": lim.get("max-buffer-size"),
            "max_storage_binding": lim.get("max-storage-buffer-binding-size"),
            "max_storage_buffers_per_stage": lim.get("max-storage-buffers-per-shader-stage"),
            "subgroups": "subgroup" in a.features, "shader_f16": "shader-f16" in a.features,
        })
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("no GPU adapters found; install a Vulkan driver (e.g. mesa-vulkan-drivers for lavapipe)")
        return 1
    for r in rows:
        mib = lambda v: f"{(v or 0) / 2**20:.0f} MiB"  # noqa: E731
        flag = "" if r["usable"] else "  (not usable for compute)"
        print(f"[{r['index']}] {r['name']}{flag}\n     maxBufferSize {mib(r['max_buffer_size'])}, "
              f"maxStorageBufferBindingSize {mib(r['max_storage_binding'])}, "
              f"storage buffers/stage {r['max_storage_buffers_per_stage']}, subgroups {r['subgroups']}")
    return 0
