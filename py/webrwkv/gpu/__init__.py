"""The GPU interface (device.py: the Device base class) and its two backends: native.py (wgpu-py) and
browser.py (Pyodide + navigator.gpu). Everything backend-specific goes through a Device; the engine
never imports wgpu.
"""

from __future__ import annotations

from typing import Any, Union

from .device import LIMIT_KEYS, STORAGE, UNIFORM, Binding, Device, Op


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
