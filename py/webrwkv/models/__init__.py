"""RWKV models: the registry of versions, the canonical model form, loading and state layout.

One file per version (v4, v5 = 5.2, v6, v7, v7de = v7 DeepEmbed) tells that version's whole story: names,
shapes and detection, state layout, the numpy time and channel mix, and the GPU layer recipe. The shared
loader maps the official and converted layouts to the canonical form of docs/ARCHITECTURE.md; `states`
reads state files.
"""

from __future__ import annotations

from .loader import load_index, load_weights, read_tensor
from .registry import (VERSIONS, ModelInfo, TensorRef, default_model_path, detect_version, init_state,
                       initial_state, model_shapes, optional_names, state_layout, tuned_state_names)

__all__ = ["ModelInfo", "TensorRef", "VERSIONS", "detect_version", "model_shapes", "optional_names",
           "state_layout", "init_state", "initial_state", "tuned_state_names", "default_model_path", "load_index",
           "load_weights", "read_tensor"]
