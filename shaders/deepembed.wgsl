// RWKV-7 DeepEmbed: the per-token scale of a channel mix's hidden layer (models/v7de.py ffn_scale).
// Token t of the step has the D x D matrix E = s_emb[token] + demb[t] (row a, column j; demb holds this
// layer's s_emb_x LN0(emb[token])); ss_j = sum_a hid[t, F + a] E[a, j], where hid[t, F .. F + D) is s1 x';
// then hid[t, f] *= s0[f] + sum_j s2[f, j] ss_j for f < F.
// Workgroup (block of WG hidden rows, token t); each recomputes ss (D * D products). The table may be split
// in row blocks [V0, V0 + NV): one dispatch per block, each skipping the tokens of the others.
#include common

@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> table: array<u32>;      // [NV, ROW] packed fp16: s_emb rows
@group(0) @binding(2) var<storage, read> s2: array<u32>;         // [F, S2ROW] packed fp16
@group(0) @binding(3) var<storage, read> vecs: array<f32>;       // this layer's vectors: s0 at S0
@group(0) @binding(4) var<storage, read> demb: array<f32>;       // [T, DE_TS]: this layer's D * D at DE_OFF
@group(0) @binding(5) var<storage, read_write> hid: array<f32>;  // [T, HS]

const D: u32 = {{D}}u;
const F: u32 = {{F}}u;
const HS: u32 = {{HS}}u;
const WG: u32 = {{WG}}u;

var<workgroup> ss: array<f32, {{D}}>;

@compute @workgroup_size({{WG}})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let t = wid.y;
  if (t >= info[0]) { return; }
  let tok = info[info[3] + t];
  if (tok < {{V0}}u || tok >= {{V0}}u + {{NV}}u) { return; }
  let row = (tok - {{V0}}u) * {{ROW}}u;
  let de = t * {{DE_TS}}u + {{DE_OFF}}u;
  let h = t * HS;
  for (var j = lid; j < D; j += WG) {
    var acc = 0.0;
    for (var a = 0u; a < D; a++) {
      let e = a * D + j;
      let pair = h2(table[row + e / 2u]);
      acc += hid[h + F + a] * (select(pair.x, pair.y, (e & 1u) == 1u) + demb[de + e]);
    }
    ss[j] = acc;
  }
  workgroupBarrier();
  let f = wid.x * WG + lid;
  if (f >= F) { return; }
  var m = vecs[{{S0}}u + f];
  for (var p = 0u; p < D / 2u; p++) {
    let w = h2(s2[f * {{S2ROW}}u + p]);
    m += w.x * ss[2u * p] + w.y * ss[2u * p + 1u];
  }
  hid[h + f] = hid[h + f] * m;
}
