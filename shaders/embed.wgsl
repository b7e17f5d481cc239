// Embedding gather + LayerNorm ln0: x[t] = LN0(emb[token[t]]). One workgroup per row.
// The embedding may be split in row blocks [V0, V0+NV); rows of other blocks are skipped.
#include common

@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> emb: array<u32>;      // [NV, C/2] packed fp16
@group(0) @binding(2) var<storage, read> vecs: array<f32>;     // ln0 weight at LNW, bias at LNB
@group(0) @binding(3) var<storage, read_write> x: array<f32>;  // [T, C]

const C: u32 = {{C}}u;
const WG: u32 = {{WG}}u;

@compute @workgroup_size({{WG}})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let t = wid.x;
  if (t >= info[0]) { return; }
  let tok = info[info[3] + t];
  if (tok < {{V0}}u || tok >= {{V0}}u + {{NV}}u) { return; }
  let src = (tok - {{V0}}u) * (C / 2u);
  var s = 0.0;
  for (var p = lid; p < C / 2u; p += WG) {
    let v = h2(emb[src + p]);
    x[t * C + 2u * p] = v.x;
    x[t * C + 2u * p + 1u] = v.y;
    s += v.x + v.y;
  }
  let mean = wg_sum(s, lid) / f32(C);
  var q = 0.0;
  for (var c = lid; c < C; c += WG) { let d = x[t * C + c] - mean; q += d * d; }
  let rstd = inverseSqrt(wg_sum(q, lid) / f32(C) + 1e-5);
  for (var c = lid; c < C; c += WG) {
    x[t * C + c] = (x[t * C + c] - mean) * rstd * vecs[{{LNW}}u + c] + vecs[{{LNB}}u + c];
  }
}
