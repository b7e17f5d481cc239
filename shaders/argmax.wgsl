// Greedy next token on the GPU: the index of the largest logit of output row 0 (the lowest index among
// equal maxima, as numpy's argmax) becomes the next step's input token and is appended to a list, so
// greedy decode steps queue back to back without reading the logits. One workgroup.

@group(0) @binding(0) var<storage, read_write> info: array<u32>;   // step metadata; token 0 is rewritten
@group(0) @binding(1) var<storage, read> logits: array<f32>;       // [n_out, V]
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;    // [0] count, then the chosen ids

const V: u32 = {{V}}u;
const WG: u32 = {{WG}}u;
const TOK0: u32 = {{TOK0}}u;
var<workgroup> bv: array<f32, WG>;
var<workgroup> bi: array<u32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
  // each thread keeps the first maximum of its stride, seeded with its first logit (-inf included);
  // threads past V hold no id. NaN logits give an unspecified id.
  var m = 0.0;
  var mi = V;
  if (lid < V) { m = logits[lid]; mi = lid; }
  for (var c = lid + WG; c < V; c += WG) {
    let v = logits[c];
    if (v > m) { m = v; mi = c; }
  }
  bv[lid] = m;
  bi[lid] = mi;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) {
      let ov = bv[lid + s];
      let oi = bi[lid + s];
      if (oi < V && (bi[lid] == V || ov > bv[lid] || (ov == bv[lid] && oi < bi[lid]))) {
        bv[lid] = ov;
        bi[lid] = oi;
      }
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    let t = bi[0];
    info[TOK0] = t;
    let n = ids[0];
    ids[n + 1u] = t;
    ids[0] = n + 1u;
  }
}
