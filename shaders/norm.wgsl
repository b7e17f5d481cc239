// LayerNorm of selected rows (the output rows listed in meta), compacted: y[i] = LN(x[rows[i]]).
#include common

@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;        // [T, C]
@group(0) @binding(2) var<storage, read> vecs: array<f32>;     // weight at LNW, bias at LNB
@group(0) @binding(3) var<storage, read_write> y: array<f32>;  // [n_out, C]

const C: u32 = {{C}}u;
const WG: u32 = {{WG}}u;

@compute @workgroup_size({{WG}})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = wid.x;
  if (i >= info[2]) { return; }
  let r = info[info[4] + i] * C;
  var s = 0.0;
  for (var c = lid; c < C; c += WG) { s += x[r + c]; }
  let mean = wg_sum(s, lid) / f32(C);
  var q = 0.0;
  for (var c = lid; c < C; c += WG) { let d = x[r + c] - mean; q += d * d; }
  let rstd = inverseSqrt(wg_sum(q, lid) / f32(C) + 1e-5);
  for (var c = lid; c < C; c += WG) {
    y[i * C + c] = (x[r + c] - mean) * rstd * vecs[{{LNW}}u + c] + vecs[{{LNB}}u + c];
  }
}
