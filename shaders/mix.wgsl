// Token shift: fused LayerNorm + every mix of one block (ln_mix).
// Workgroup (channel block cb, row chunk) of segment wid.y; thread = one channel c. For each row of
// the chunk it computes the row's LN statistics over all C channels (redundantly per channel block),
// then out[t, j, c] = lerp of LN(x[t])[c] and the previous row's (or, for the segment's first row,
// the slot's saved shift) by mu_j[c] (LERP_PREV=1: prev + (x' - prev) * mu, else x' + (prev - x') * mu; v6's
// EXTRA=1 also writes d = prev - x' and x' after the NMIX mixes). The first chunk of a segment also saves the segment's last LN
// row into the state, after reading the old one. All loads of a row are issued before its stores.
#include common

@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;            // [T, C] residual stream
@group(0) @binding(2) var<storage, read> vecs: array<f32>;         // this layer's vectors
@group(0) @binding(3) var<storage, read_write> state: array<f32>;  // this layer, slot stride SLOT
@group(0) @binding(4) var<storage, read_write> out: array<f32>;    // [T, NOUT, C]

const C: u32 = {{C}}u;
const WG: u32 = {{WG}}u;
const CB: u32 = {{C}}u / {{WG}}u;
const NOUT: u32 = {{NOUT}}u;
const RPW: u32 = {{RPW}}u;

// LayerNorm of row `row`, channel c (every thread of the workgroup must call it).
fn ln(row: u32, c: u32, lid: u32, w: f32, b: f32) -> f32 {
  var s = 0.0;
  for (var i = lid; i < C; i += WG) { s += x[row * C + i]; }
  let mean = wg_sum(s, lid) / f32(C);
  var q = 0.0;
  for (var i = lid; i < C; i += WG) { let d = x[row * C + i] - mean; q += d * d; }
  let rstd = inverseSqrt(wg_sum(q, lid) / f32(C) + 1e-5);
  return (x[row * C + c] - mean) * rstd * w + b;
}

@compute @workgroup_size({{WG}})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let s = wid.y;
  if (s >= info[1]) { return; }
  let seg0 = info[8u + 4u * s];
  let n = info[9u + 4u * s];
  let sbase = info[10u + 4u * s] * {{SLOT}}u + {{XOFF}}u;
  let r0 = (wid.x / CB) * RPW;
  if (r0 >= n) { return; }
  let r1 = min(n, r0 + RPW);
  let c = (wid.x % CB) * WG + lid;
  let lw = vecs[{{LNW}}u + c];
  let lb = vecs[{{LNB}}u + c];
#for j in 0..NMIX
  let m${j} = vecs[${MU + j * C}u + c];
#endfor
  var b = 0.0;
  if (r0 == 0u) {
    b = state[sbase + c];
  } else {
    b = ln(seg0 + r0 - 1u, c, lid, lw, lb);
  }
  for (var r = r0; r < r1; r++) {
    let t = seg0 + r;
    let a = ln(t, c, lid, lw, lb);
    let o = t * NOUT * C + c;
#for j in 0..NMIX
#if LERP_PREV
    out[o + ${j * C}u] = b + (a - b) * m${j};
#else
    out[o + ${j * C}u] = a + (b - a) * m${j};
#endif
#endfor
#if EXTRA
    out[o + ${NMIX * C}u] = b - a;
    out[o + ${(NMIX + 1) * C}u] = a;
#endif
    b = a;
  }
  if (r0 == 0u) {
    var last = b;
    if (r1 < n) { last = ln(seg0 + n - 1u, c, lid, lw, lb); }
    state[sbase + c] = last;
  }
}
