// NF4 matrix x f32 vector for single tokens: as gemv_int8.wgsl, but W rows are 4-bit codes (8 per u32,
// low nibble first) indexing the NF4 levels, with one f32 scale per 64 weights of a row stored after the
// block's rows (at u32 index SB + row * NB + k / 64). Each thread reads one u32 (8 weights) at a time.
{{ENABLE}}
#include common

@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> w: array<u32>;            // [rows, K/8] codes, then [rows, NB] f32 scales
@group(0) @binding(2) var<storage, read> xv: array<vec4<f32>>;     // activations, as vec4
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
{{GATE_DECL}}

const K8: u32 = {{K}}u / 8u;
const NB: u32 = ({{K}}u + 63u) / 64u;
const R: u32 = {{R}}u;
const TPR: u32 = {{TPR}}u;
const SB: u32 = {{SB}}u;

const NF4 = array<f32, 16>(-1.0, -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734, -0.0910500, 0.0,
                           0.0795803, 0.1609302, 0.2461123, 0.3379152, 0.4407098, 0.5626170, 0.7229568, 1.0);

// four NF4 levels from the nibbles of q starting at bit `b`
fn nf(q: u32, b: u32) -> vec4<f32> {
  return vec4<f32>(NF4[(q >> b) & 15u], NF4[(q >> (b + 4u)) & 15u], NF4[(q >> (b + 8u)) & 15u],
                   NF4[(q >> (b + 12u)) & 15u]);
}

// 8 weights (u32 k of a row starting at wb) dotted with their activations, times the block scale
fn dot8(sb: u32, wb: u32, xb: u32, k: u32) -> f32 {
  let q = w[wb + k];
  return bitcast<f32>(w[sb + k / 8u]) * (dot(nf(q, 0u), xv[xb + 2u * k]) + dot(nf(q, 16u), xv[xb + 2u * k + 1u]));
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
    let sb = SB + (g_row(g) + n) * NB;
    let xb = ({{X_OFF}}u + t * {{X_TS}}u + g_x(g)) / 4u;
    var k = j;
    for (; k + ({{UNROLL}}u - 1u) * TPR < K8; k += {{UNROLL}}u * TPR) {
{{UNROLLED}}
    }
    for (; k < K8; k += TPR) {
      acc += dot8(sb, wb, xb, k);
    }
  }
  {{REDUCE}}
  if (j == 0u && n < nr) {
    let col = g_col(g) + n;
    let v = act(g, total);
    {{EPILOGUE}}
  }
}
