"""webrwkv: RWKV v4-v7 inference on WebGPU, the same Python in the browser and natively."""

from .errors import WebRwkvError

__version__ = "0.1.0"
__all__ = ["WebRwkvError", "__version__"]
