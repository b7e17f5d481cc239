"""Numpy float32 forward pass for RWKV v4, v5.2, v6 and v7: the oracle every other part is tested against.

Weights are the canonical form of webrwkv.models ([out, in] matrices, flat vectors) and the state is
the per-slot dict of docs/ARCHITECTURE.md. Matmuls are batched over the sequence; only the
recurrence loops over tokens.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .errors import WebRwkvError
from .models import ModelInfo, init_state, load_weights, state_layout

Weights = dict[str, np.ndarray]
State = dict[str, np.ndarray]


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def group_norm(x: np.ndarray, n_head: int, w: np.ndarray, b: np.ndarray, eps: float = 64e-5) -> np.ndarray:
    """GroupNorm of [T, C] over n_head groups (one per head)."""
    T, C = x.shape
    return layer_norm(x.reshape(T, n_head, C // n_head), 1.0, 0.0, eps).reshape(T, C) * w + b


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def shifted(x: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """The previous token's LN output for every position: [prev, x[0], ..., x[T-2]]."""
    return np.concatenate([prev[None], x[:-1]], axis=0)


def linear(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return x @ w.T  # w is [out, in]


# ---------------------------------------------------------------------------------------- v4

def time_mix_v4(w: Weights, info: ModelInfo, i: int, x: np.ndarray, state: State, v_first: Any):
    a, s = f"blocks.{i}.att.", f"blocks.{i}."
    sx = shifted(x, state[s + "att_x"])
    mix = lambda m: x * w[a + m] + sx * (1 - w[a + m])  # noqa: E731
    k = linear(mix("time_mix_k"), w[a + "key.weight"])
    v = linear(mix("time_mix_v"), w[a + "value.weight"])
    r = sigmoid(linear(mix("time_mix_r"), w[a + "receptance.weight"]))
    decay, u = -np.exp(w[a + "time_decay"]), w[a + "time_first"]
    aa, bb, pp = state[s + "att_aa"], state[s + "att_bb"], state[s + "att_pp"]
    out = np.empty_like(v)
    for t in range(len(x)):
        q = np.maximum(pp, u + k[t])
        e1, e2 = np.exp(pp - q), np.exp(u + k[t] - q)
        out[t] = (e1 * aa + e2 * v[t]) / (e1 * bb + e2)
        q = np.maximum(decay + pp, k[t])
        e1, e2 = np.exp(decay + pp - q), np.exp(k[t] - q)
        aa, bb, pp = e1 * aa + e2 * v[t], e1 * bb + e2, q
    state[s + "att_x"], state[s + "att_aa"], state[s + "att_bb"], state[s + "att_pp"] = x[-1], aa, bb, pp
    return linear(r * out, w[a + "output.weight"]), v_first


def channel_mix_v4(w: Weights, i: int, x: np.ndarray, state: State) -> np.ndarray:
    """v4/v5 FFN: sigmoid(W_r x_r) * W_v relu(W_k x_k)^2 with lerp mixes."""
    f, s = f"blocks.{i}.ffn.", f"blocks.{i}.ffn_x"
    sx = shifted(x, state[s])
    state[s] = x[-1]
    xk = x * w[f + "time_mix_k"] + sx * (1 - w[f + "time_mix_k"])
    xr = x * w[f + "time_mix_r"] + sx * (1 - w[f + "time_mix_r"])
    k = np.maximum(linear(xk, w[f + "key.weight"]), 0) ** 2
    return sigmoid(linear(xr, w[f + "receptance.weight"])) * linear(k, w[f + "value.weight"])


# ------------------------------------------------------------------------------------ v5, v6

def wkv5(r, k, v, decay, u, S):
    """Per-head linear attention with decay: r, k, v [T, H, N]; decay [H, N] or [T, H, N]; S [H, N(key), N(value)]."""
    out = np.empty_like(v)
    for t in range(len(r)):
        kv = k[t][:, :, None] * v[t][:, None, :]
        out[t] = np.einsum("hj,hji->hi", r[t], u[:, :, None] * kv + S)
        d = decay[t] if decay.ndim == 3 else decay
        S = kv + d[:, :, None] * S
    return out, S


def _heads_out(w: Weights, info: ModelInfo, i: int, y: np.ndarray, g: np.ndarray) -> np.ndarray:
    a = f"blocks.{i}.att."
    y = group_norm(y.reshape(len(y), -1), info.n_head, w[a + "ln_x.weight"], w[a + "ln_x.bias"])
    return linear(y * g, w[a + "output.weight"])


def time_mix_v5(w: Weights, info: ModelInfo, i: int, x: np.ndarray, state: State, v_first: Any):
    a, s = f"blocks.{i}.att.", f"blocks.{i}."
    T, H, N = len(x), info.n_head, info.head_size
    sx = shifted(x, state[s + "att_x"])
    mix = lambda m: x * w[a + m] + sx * (1 - w[a + m])  # noqa: E731
    r = linear(mix("time_mix_r"), w[a + "receptance.weight"]).reshape(T, H, N)
    k = linear(mix("time_mix_k"), w[a + "key.weight"]).reshape(T, H, N)
    v = linear(mix("time_mix_v"), w[a + "value.weight"]).reshape(T, H, N)
    g = linear(mix("time_mix_g"), w[a + "gate.weight"])
    g = g * sigmoid(g)
    decay = np.exp(-np.exp(w[a + "time_decay"])).reshape(H, N)
    y, state[s + "att_kv"] = wkv5(r, k, v, decay, w[a + "time_faaaa"].reshape(H, N), state[s + "att_kv"])
    state[s + "att_x"] = x[-1]
    return _heads_out(w, info, i, y, g), v_first


def time_mix_v6(w: Weights, info: ModelInfo, i: int, x: np.ndarray, state: State, v_first: Any):
    a, s = f"blocks.{i}.att.", f"blocks.{i}."
    T, H, N = len(x), info.n_head, info.head_size
    dx = shifted(x, state[s + "att_x"]) - x
    xx = x + dx * w[a + "time_maa_x"]
    m = np.tanh(linear(xx, w[a + "time_maa_w1"])).reshape(T, 5, -1)  # [T, 5, D]
    mw, mk, mv, mr, mg = np.einsum("tfd,fcd->ftc", m, w[a + "time_maa_w2"])
    xw = x + dx * (w[a + "time_maa_w"] + mw)
    xk = x + dx * (w[a + "time_maa_k"] + mk)
    xv = x + dx * (w[a + "time_maa_v"] + mv)
    xr = x + dx * (w[a + "time_maa_r"] + mr)
    xg = x + dx * (w[a + "time_maa_g"] + mg)
    r = linear(xr, w[a + "receptance.weight"]).reshape(T, H, N)
    k = linear(xk, w[a + "key.weight"]).reshape(T, H, N)
    v = linear(xv, w[a + "value.weight"]).reshape(T, H, N)
    g = linear(xg, w[a + "gate.weight"])
    g = g * sigmoid(g)
    d = w[a + "time_decay"] + linear(np.tanh(linear(xw, w[a + "time_decay_w1"])), w[a + "time_decay_w2"])
    decay = np.exp(-np.exp(d)).reshape(T, H, N)
    y, state[s + "att_kv"] = wkv5(r, k, v, decay, w[a + "time_faaaa"].reshape(H, N), state[s + "att_kv"])
    state[s + "att_x"] = x[-1]
    return _heads_out(w, info, i, y, g), v_first


def channel_mix_v6(w: Weights, i: int, x: np.ndarray, state: State) -> np.ndarray:
    f, s = f"blocks.{i}.ffn.", f"blocks.{i}.ffn_x"
    dx = shifted(x, state[s]) - x
    state[s] = x[-1]
    k = np.maximum(linear(x + dx * w[f + "time_maa_k"], w[f + "key.weight"]), 0) ** 2
    r = sigmoid(linear(x + dx * w[f + "time_maa_r"], w[f + "receptance.weight"]))
    return r * linear(k, w[f + "value.weight"])


# ---------------------------------------------------------------------------------------- v7

def wkv7(r, w, k, v, kappa, a, S):
    """Delta-rule recurrence, all [T, H, N]; S is [H, N(key j), N(value i)].
    s_i = sum_j S_ji (-kappa_j);  S_ji <- S_ji w_j + k_j v_i + s_i kappa_j a_j;  y_i = sum_j r_j S_ji."""
    out = np.empty_like(v)
    for t in range(len(r)):
        sa = np.einsum("hji,hj->hi", S, -kappa[t])
        S = (S * w[t][:, :, None] + k[t][:, :, None] * v[t][:, None, :]
             + (kappa[t] * a[t])[:, :, None] * sa[:, None, :])
        out[t] = np.einsum("hj,hji->hi", r[t], S)
    return out, S


def time_mix_v7(w: Weights, info: ModelInfo, i: int, x: np.ndarray, state: State, v_first: Any):
    p, s = f"blocks.{i}.att.", f"blocks.{i}."
    T, H, N = len(x), info.n_head, info.head_size
    dx = shifted(x, state[s + "att_x"]) - x
    xr, xw, xk, xv, xa, xg = (x + dx * w[p + "x_" + m] for m in "rwkvag")
    lora = lambda z, n: linear(z, w[p + n + "1"])  # noqa: E731
    r = linear(xr, w[p + "receptance.weight"])
    k = linear(xk, w[p + "key.weight"])
    v = linear(xv, w[p + "value.weight"])
    decay = np.exp(-math.exp(-0.5) * sigmoid(w[p + "w0"] + linear(np.tanh(lora(xw, "w")), w[p + "w2"])))
    a = sigmoid(w[p + "a0"] + linear(lora(xa, "a"), w[p + "a2"]))
    g = linear(sigmoid(lora(xg, "g")), w[p + "g2"])
    kk = (k * w[p + "k_k"]).reshape(T, H, N)
    kk = kk / np.maximum(np.linalg.norm(kk, axis=-1, keepdims=True), 1e-12)
    k = k * (1 + (a - 1) * w[p + "k_a"])
    if i == 0:
        v_first = v
    else:
        v = v + (v_first - v) * sigmoid(w[p + "v0"] + linear(lora(xv, "v"), w[p + "v2"]))
    hv = lambda z: z.reshape(T, H, N)  # noqa: E731
    y, state[s + "att_kv"] = wkv7(hv(r), hv(decay), hv(k), hv(v), kk, hv(a), state[s + "att_kv"])
    state[s + "att_x"] = x[-1]
    y = group_norm(y.reshape(T, H * N), H, w[p + "ln_x.weight"], w[p + "ln_x.bias"])
    bonus = (hv(r) * hv(k) * w[p + "r_k"].reshape(H, N)).sum(-1, keepdims=True) * hv(v)
    y = y + bonus.reshape(T, H * N)
    return linear(y * g, w[p + "output.weight"]), v_first


def channel_mix_v7(w: Weights, i: int, x: np.ndarray, state: State) -> np.ndarray:
    f, s = f"blocks.{i}.ffn.", f"blocks.{i}.ffn_x"
    dx = shifted(x, state[s]) - x
    state[s] = x[-1]
    k = np.maximum(linear(x + dx * w[f + "x_k"], w[f + "key.weight"]), 0) ** 2
    return linear(k, w[f + "value.weight"])


TIME_MIX = {"v4": time_mix_v4, "v5": time_mix_v5, "v6": time_mix_v6, "v7": time_mix_v7}
CHANNEL_MIX = {"v4": channel_mix_v4, "v5": channel_mix_v4, "v6": channel_mix_v6, "v7": channel_mix_v7}


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
    """Run a token sequence. Returns (logits [V] of the last token, or [T, V] with all_logits,
    the new state). The input state is not modified."""
    toks = _check_tokens(info, tokens)
    state = {k: np.array(v, dtype=np.float32) for k, v in (state or init_state(info)).items()}
    w = weights
    x = layer_norm(w["emb.weight"][toks], w["blocks.0.ln0.weight"], w["blocks.0.ln0.bias"])
    v_first = None
    for i in range(info.n_layer):
        b = f"blocks.{i}."
        dx, v_first = TIME_MIX[info.version](w, info, i, layer_norm(x, w[b + "ln1.weight"], w[b + "ln1.bias"]),
                                             state, v_first)
        x = x + dx
        x = x + CHANNEL_MIX[info.version](w, i, layer_norm(x, w[b + "ln2.weight"], w[b + "ln2.bias"]), state)
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
        self._state = [init_state(self.info) for _ in range(max_batch)]
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

    def run(self, all_logits: bool = False) -> dict[int, np.ndarray]:
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
        return out

    async def run_async(self, all_logits: bool = False) -> dict[int, np.ndarray]:
        return self.run(all_logits)

    def get_state(self, slot: int) -> State:
        return {k: v.copy() for k, v in self._state[self._slot(slot)].items()}

    async def get_state_async(self, slot: int) -> State:
        return self.get_state(slot)

    def set_state(self, slot: int, state: State) -> None:
        slot = self._slot(slot)
        new = {}
        for name, shape in state_layout(self.info):
            if name not in state or tuple(np.shape(state[name])) != tuple(shape):
                got = "missing" if name not in state else f"shape {list(np.shape(state[name]))}"
                raise WebRwkvError(f"state entry '{name}' is {got}; this model needs {list(shape)}")
            new[name] = np.array(state[name], dtype=np.float32)
        self._state[slot] = new

    def reset(self, slot: int) -> None:
        """Fresh state and no pending input for the slot."""
        slot = self._slot(slot)
        self._state[slot], self._pending[slot], self._done[slot] = init_state(self.info), [], []

    def clone(self, src: int, dst: int) -> None:
        """Copy src's state into dst."""
        self._state[self._slot(dst)] = self.get_state(src)
