// Token shift: fused LayerNorm + every mix of one block (ln_mix), and v6's second mix stage (mix6).
// ln_mix: workgroup (chunk of RPW rows, segment). out[t, j] = lerp of LN(x[t]) and the previous
// row's LN output (or the slot's saved shift for the segment's first row) by mu_j. The first chunk
// of a segment saves the segment's last LN row into the state after reading the old one.
#include common

@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;            // [T, C] residual stream
@group(0) @binding(2) var<storage, read> vecs: array<f32>;         // this layer's vectors
@group(0) @binding(3) var<storage, read_write> state: array<f32>;  // this layer, slot stride SLOT
@group(0) @binding(4) var<storage, read_write> out: array<f32>;    // [T, NOUT, C]

const C: u32 = {{C}}u;
const WG: u32 = {{WG}}u;
const CPT: u32 = {{C}}u / {{WG}}u;
const NMIX: u32 = {{NMIX}}u;
const NOUT: u32 = {{NOUT}}u;
const RPW: u32 = {{RPW}}u;

fn ln_load(row: u32, lid: u32) -> array<f32, CPT> {
  var v: array<f32, CPT>;
  var s = 0.0;
  for (var i = 0u; i < CPT; i++) { v[i] = x[row * C + lid + i * WG]; s += v[i]; }
  let mean = wg_sum(s, lid) / f32(C);
  var q = 0.0;
  for (var i = 0u; i < CPT; i++) { v[i] -= mean; q += v[i] * v[i]; }
  let rstd = inverseSqrt(wg_sum(q, lid) / f32(C) + 1e-5);
  for (var i = 0u; i < CPT; i++) {
    let c = lid + i * WG;
    v[i] = v[i] * rstd * vecs[{{LNW}}u + c] + vecs[{{LNB}}u + c];
  }
  return v;
}

@compute @workgroup_size({{WG}})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let s = wid.y;
  if (s >= info[1]) { return; }
  let seg0 = info[8u + 4u * s];
  let n = info[9u + 4u * s];
  let sbase = info[10u + 4u * s] * {{SLOT}}u + {{XOFF}}u;
  let r0 = wid.x * RPW;
  if (r0 >= n) { return; }
  let r1 = min(n, r0 + RPW);
  var prev: array<f32, CPT>;
  if (r0 == 0u) {
    for (var i = 0u; i < CPT; i++) { prev[i] = state[sbase + lid + i * WG]; }
  } else {
    prev = ln_load(seg0 + r0 - 1u, lid);
  }
  for (var r = r0; r < r1; r++) {
    let t = seg0 + r;
    let cur = ln_load(t, lid);
    for (var i = 0u; i < CPT; i++) {
      let c = lid + i * WG;
      let a = cur[i];
      let b = prev[i];
      for (var j = 0u; j < NMIX; j++) {
        let mu = vecs[{{MU}}u + j * C + c];
        out[(t * NOUT + j) * C + c] = {{MIXEXPR}};
      }
      if ({{EXTRA}}u == 1u) {
        out[(t * NOUT + NMIX) * C + c] = b - a;
        out[(t * NOUT + NMIX + 1u) * C + c] = a;
      }
    }
    prev = cur;
  }
  if (r0 == 0u) {
    var last = prev;
    if (r1 < n) { last = ln_load(seg0 + n - 1u, lid); }
    for (var i = 0u; i < CPT; i++) { state[sbase + lid + i * WG] = last[i]; }
  }
}
