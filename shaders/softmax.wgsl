// Softmax over each row of logits in place: p = exp(l - max) / sum. One workgroup per row.
#include common

@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read_write> p: array<f32>;      // [n_out, V]

const V: u32 = {{V}}u;
const WG: u32 = {{WG}}u;
var<workgroup> mx: array<f32, {{WG}}>;

@compute @workgroup_size({{WG}})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.x;
  if (row >= info[2]) { return; }
  let b = row * V;
  var m = -3.0e38;
  for (var c = lid; c < V; c += WG) { m = max(m, p[b + c]); }
  mx[lid] = m;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { mx[lid] = max(mx[lid], mx[lid + s]); }
    workgroupBarrier();
  }
  m = mx[0];
  var z = 0.0;
  for (var c = lid; c < V; c += WG) { let e = exp(p[b + c] - m); p[b + c] = e; z += e; }
  let inv = 1.0 / wg_sum(z, lid);
  for (var c = lid; c < V; c += WG) { p[b + c] = p[b + c] * inv; }
}
