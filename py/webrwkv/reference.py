"""Numpy float32 forward pass for every version: the oracle every other part is tested against.

Weights are the canonical form of webrwkv.models ([out, in] matrices, flat vectors) and the state is
the per-slot dict of docs/ARCHITECTURE.md. Each version's time and channel mix are in its file
(webrwkv.models.vN); matmuls are batched over the sequence, only the recurrences loop over tokens.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .errors import WebRwkvError
from .models import VERSIONS, ModelInfo, initial_state, load_weights, state_layout
from .models.nn import layer_norm, linear

Weights = dict[str, np.ndarray]
State = dict[str, np.ndarray]


# ------------------------------------------------------------------------------------ driver

def _check_tokens(info: ModelInfo, tokens: Sequence[int]) -> np.ndarray:
    toks = np.asarray(tokens, dtype=np.int64).reshape(-1)
    if toks.size == 0:
        raise WebRwkvError("no tokens to run: pass at least one token id")
    bad = toks[(toks < 0) | (toks >= info.vocab)]
    if bad.size:
        raise WebRwkvError(f"token id {int(bad[0])} is outside the vocabulary (0..{info.vocab - 1})")
    return toks


def forward(weights: Weights, info: ModelInfo, tokens: Sequence[int], state: State | None = None,
            all_logits: bool = False) -> tuple[np.ndarray, State]:
    """Run a token sequence from `state` (None: the model's initial state, a state-tuned checkpoint's when it
    is one). Returns (logits [V] of the last token, or [T, V] with all_logits, the new state). The input
    state is not modified."""
    toks = _check_tokens(info, tokens)
    state = {k: np.array(v, dtype=np.float32) for k, v in (state or initial_state(info, weights)).items()}
    w, mod = weights, VERSIONS[info.version]
    x = layer_norm(w["emb.weight"][toks], w["blocks.0.ln0.weight"], w["blocks.0.ln0.bias"])
    # what the layers hand on (v7: v_first); a version with `begin` also sees the tokens and LN0's output
    begin = getattr(mod, "begin", None)
    carry = begin(w, info, toks, x) if begin is not None else None
    for i in range(info.n_layer):
        b = f"blocks.{i}."
        dx, carry = mod.time_mix(w, info, i, layer_norm(x, w[b + "ln1.weight"], w[b + "ln1.bias"]), state, carry)
        x = x + dx
        x = x + mod.channel_mix(w, info, i, layer_norm(x, w[b + "ln2.weight"], w[b + "ln2.bias"]), state, carry)
    if not all_logits:
        x = x[-1:]
    logits = linear(layer_norm(x, w["ln_out.weight"], w["ln_out.bias"]), w["head.weight"]).astype(np.float32)
    state = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}
    return (logits if all_logits else logits[0]), state


def step(weights: Weights, info: ModelInfo, token: int, state: State | None) -> tuple[np.ndarray, State]:
    """Run one token: (logits [V], new state)."""
    return forward(weights, info, [int(token)], state)


class ReferenceRuntime:
    """The runtime API of docs/ARCHITECTURE.md in numpy: slots with pending tokens and explicit state.

    `model` is a path/URL/byte source (None: the bundled model) or an (info, weights) pair.
    run() spends up to token_chunk_size tokens over the non-empty slots and returns logits for the
    slots whose input ran out: [V], or with all_logits [T, V] for every token pushed since that
    slot's last output.
    """

    def __init__(self, model: Any = None, max_batch: int = 1, token_chunk_size: int = 128) -> None:
        if isinstance(model, tuple):
            self.info, self.weights = model
        else:
            from .models import default_model_path

            self.info, self.weights = load_weights(model if model is not None else default_model_path())
        if max_batch < 1 or token_chunk_size < 1:
            raise WebRwkvError("max_batch and token_chunk_size must be at least 1")
        self.max_batch, self.token_chunk_size = max_batch, token_chunk_size
        self._model_init = initial_state(self.info, self.weights)  # a state-tuned checkpoint's, else zeros
        self._inits = [self._model_init] * max_batch
        self._state = [self.get_init(s) for s in range(max_batch)]
        self._pending: list[list[int]] = [[] for _ in range(max_batch)]
        self._done: list[list[np.ndarray]] = [[] for _ in range(max_batch)]

    def _slot(self, slot: int) -> int:
        if not isinstance(slot, (int, np.integer)) or not 0 <= slot < self.max_batch:
            raise WebRwkvError(f"slot {slot!r} does not exist: use 0..{self.max_batch - 1}")
        return int(slot)

    def push(self, slot: int, tokens: Sequence[int]) -> None:
        """Queue tokens for a slot."""
        toks = _check_tokens(self.info, tokens)
        self._pending[self._slot(slot)].extend(int(t) for t in toks)

    def pending(self, slot: int) -> int:
        """How many queued tokens the slot still has."""
        return len(self._pending[self._slot(slot)])

    decoder = None  # no GPU: tokens are sampled on the CPU from the logits

    def check_slot(self, slot: int) -> int:
        return self._slot(slot)

    def run(self, all_logits: bool = False, outputs: bool = True) -> dict[int, np.ndarray]:
        active = [s for s in range(self.max_batch) if self._pending[s]]
        out: dict[int, np.ndarray] = {}
        budget = self.token_chunk_size
        for n, s in enumerate(active):
            share = max(1, budget // (len(active) - n))
            toks = self._pending[s][:share]
            del self._pending[s][:share]
            budget -= len(toks)
            logits, self._state[s] = forward(self.weights, self.info, toks, self._state[s], all_logits)
            self._done[s].append(logits)
            if not self._pending[s]:
                out[s] = np.concatenate(self._done[s]) if all_logits else logits
                self._done[s] = []
        return out if outputs else {}

    async def run_async(self, all_logits: bool = False, outputs: bool = True) -> dict[int, np.ndarray]:
        return self.run(all_logits, outputs)

    def get_state(self, slot: int) -> State:
        return {k: v.copy() for k, v in self._state[self._slot(slot)].items()}

    async def get_state_async(self, slot: int) -> State:
        return self.get_state(slot)

    def set_state(self, slot: int, state: State) -> None:
        self._state[self._slot(slot)] = self._checked(state)

    def _checked(self, state: State) -> State:
        new = {}
        for name, shape in state_layout(self.info):
            if name not in state or tuple(np.shape(state[name])) != tuple(shape):
                got = "missing" if name not in state else f"shape {list(np.shape(state[name]))}"
                raise WebRwkvError(f"state entry '{name}' is {got}; this model needs {list(shape)}")
            new[name] = np.array(state[name], dtype=np.float32)
        return new

    def get_init(self, slot: int) -> State:
        """A copy of what reset() returns the slot to."""
        return {k: v.copy() for k, v in self._inits[self._slot(slot)].items()}

    def reset(self, slot: int) -> None:
        """The slot's initial state (set_initial_state) and no pending input."""
        slot = self._slot(slot)
        self._state[slot], self._pending[slot], self._done[slot] = self.get_init(slot), [], []

    def set_initial_state(self, state: State | None, slot: int | None = None) -> None:
        """Make `state` what reset() returns the slot to (every slot's when slot is None) and reset it now;
        None goes back to the model's own."""
        init = self._model_init if state is None else self._checked(state)
        for s in range(self.max_batch) if slot is None else [self._slot(slot)]:
            self._inits[s] = init
            self.reset(s)

    def clone(self, src: int, dst: int) -> None:
        """Copy src's state into dst."""
        self._state[self._slot(dst)] = self.get_state(src)
