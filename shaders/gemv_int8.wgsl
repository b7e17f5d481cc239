// int8 matrix x f32 vector for single tokens: as gemv.wgsl, but W rows are int8 (4 per u32) with one
// f32 scale per row stored after the block's rows (at u32 index SB + row); the row sum is scaled once.
// Each thread reads vec2<u32> (8 weights) at a time, matching two vec4 activation loads.
{{ENABLE}}
#include common

@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> w: array<vec2<u32>>;      // [rows, K/8], then [rows] f32 scales
@group(0) @binding(2) var<storage, read> xv: array<vec4<f32>>;     // activations, as vec4
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
{{GATE_DECL}}

const K8: u32 = {{K}}u / 8u;
const R: u32 = {{R}}u;
const TPR: u32 = {{TPR}}u;
const SB: u32 = {{SB}}u;

// four signed bytes of q (little-endian) as floats
fn i4(q: u32) -> vec4<f32> {
  let s = vec4<i32>(bitcast<i32>(q << 24u), bitcast<i32>(q << 16u), bitcast<i32>(q << 8u), bitcast<i32>(q));
  return vec4<f32>(s >> vec4<u32>(24u));
}

fn wscale(row: u32) -> f32 {
  let i = SB + row;
  return bitcast<f32>(w[i / 2u][i % 2u]);
}

{{ACT}}
{{GROUPS}}

@compute @workgroup_size({{WG}})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32
        {{SG_ARGS}}) {
  let t = wid.y;
  if (t >= info[{{TSRC}}u]) { return; }
  let g = wid.z;
  let nl = lid / TPR;
  let j = lid % TPR;
  let n = wid.x * R + nl;
  let nr = g_nr(g);
  if (wid.x * R >= nr) { return; }
  var acc = 0.0;
  if (n < nr) {
    let wb = (g_row(g) + n) * K8;
    let xb = ({{X_OFF}}u + t * {{X_TS}}u + g_x(g)) / 4u;
    var k = j;
    for (; k + ({{UNROLL}}u - 1u) * TPR < K8; k += {{UNROLL}}u * TPR) {
{{UNROLLED}}
    }
    for (; k < K8; k += TPR) {
      let q = w[wb + k];
      acc += dot(i4(q.x), xv[xb + 2u * k]) + dot(i4(q.y), xv[xb + 2u * k + 1u]);
    }
  }
  {{REDUCE}}
  if (j == 0u && n < nr) {
    let col = g_col(g) + n;
    let v = act(g, total * wscale(g_row(g) + n));
    {{EPILOGUE}}
  }
}
