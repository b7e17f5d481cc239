// Shared by gemv, gemm and gemm_sum: the group table, the activations and the epilogue of a matmul.
// Group g (P in all) has g_nr(g) rows from W row g_row(g), reads X at g_x(g), writes from column g_col(g),
// with activation act(g, .). A list of one value means every group has that value.
// The epilogue writes y[Y_OFF + t * Y_TS + col] by MODE: "store" (=), "add" (+=), "gate" (+= gate * v),
// "lerp" (v6 token shift: gate = [x_x, d, x'] rows, y = x' + d * (mu[col] + v), col modulo G_OFF).

#if MODE == "gate" or MODE == "lerp"
@group(0) @binding(${GATE_AT}) var<storage, read> gate: array<f32>;
#endif
#if MODE == "lerp"
@group(0) @binding(${GATE_AT + 1}) var<storage, read> mu: array<f32>;
#endif

fn mm_sigmoid(x: f32) -> f32 { return 1.0 / (1.0 + exp(-x)); }

// activation `a`: 0 none, 1 relu squared, 2 sigmoid, 3 tanh (its argument clamped, as exp overflows)
fn act_code(a: u32, x: f32) -> f32 {
  switch a {
    case 1u: { return max(x, 0.0) * max(x, 0.0); }
    case 2u: { return mm_sigmoid(x); }
    case 3u: { return tanh(clamp(x, -15.0, 15.0)); }
    default: { return x; }
  }
}

fn act(g: u32, x: f32) -> f32 {
#if len(ACTS) == 1
  return act_code(${ACTS[0]}u, x);
#else
  switch g {
#for i in 0..len(ACTS)
    case ${i}u: { return act_code(${ACTS[i]}u, x); }
#endfor
    default: { return x; }
  }
#endif
}

#for f in 0..4
fn ${["g_nr", "g_row", "g_x", "g_col"][f]}(g: u32) -> u32 {
#if len(GROUPS[f]) == 1
  return ${GROUPS[f][0]}u;
#else
  switch g {
#for i in 0..len(GROUPS[f])
    case ${i}u: { return ${GROUPS[f][i]}u; }
#endfor
    default: { return 0u; }
  }
#endif
}
#endfor

fn emit(t: u32, col: u32, v: f32) {
  let yi = ${Y_OFF}u + t * ${Y_TS}u + col;
#if MODE == "store"
  y[yi] = v;
#elif MODE == "add"
  y[yi] = y[yi] + v;
#elif MODE == "gate"
  y[yi] = y[yi] + gate[${G_OFF}u + t * ${G_TS}u + col] * v;
#elif MODE == "lerp"
  let gi = t * ${G_TS}u + col % ${G_OFF}u;
  y[yi] = gate[gi + ${2 * G_OFF}u] + gate[gi + ${G_OFF}u] * (mu[${MU_OFF}u + col] + v);
#endif
}
