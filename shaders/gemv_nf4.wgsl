// NF4 weights for gemv.wgsl: W rows are 4-bit codes (8 per u32, low nibble first) indexing the NF4 levels,
// with one f32 scale per 64 weights of a row stored after the block's rows (at u32 index SB + row * NB + k / 64).
#include nf4

@group(0) @binding(1) var<storage, read> w: array<u32>;            // [rows, K/8] codes, then [rows, NB] f32 scales

const NB: u32 = ({{K}}u + 63u) / 64u;
const SB: u32 = {{SB}}u;

// the two NF4 levels of every byte (low nibble first): one shared-memory read per two weights, where indexing
// the constant array per weight would copy it to per-thread memory
var<workgroup> lut: array<vec2<f32>, 256>;

fn prologue(lid: u32) {
  for (var i = lid; i < 256u; i += {{WG}}u) { lut[i] = vec2<f32>(NF4[i & 15u], NF4[i >> 4u]); }
  workgroupBarrier();
}

// four NF4 levels from the nibbles of q starting at bit `b`
fn nf(q: u32, b: u32) -> vec4<f32> {
  return vec4<f32>(lut[(q >> b) & 255u], lut[(q >> (b + 8u)) & 255u]);
}

fn wload(wb: u32, k: u32) -> u32 { return w[wb + k]; }

// 8 weights (u32 k of the row starting at wb) as floats, times their block's scale
fn wvals(q: u32, wb: u32, k: u32) -> W8 {
  let s = bitcast<f32>(w[SB + wb / K8 * NB + k / 8u]);
  return W8(s * nf(q, 0u), s * nf(q, 16u));
}

fn scaled(row: u32, total: f32) -> f32 { return total; }
