// int8 weights for gemv.wgsl: W rows are int8 (4 per u32, read as vec2<u32>: 8 weights) with one f32 scale
// per row stored after the block's rows (at u32 index SB + row); the row sum is scaled once.

@group(0) @binding(1) var<storage, read> w: array<vec2<u32>>;      // [rows, K/8], then [rows] f32 scales

const SB: u32 = {{SB}}u;

// four signed bytes of q (little-endian) as floats
fn i4(q: u32) -> vec4<f32> {
  let s = vec4<i32>(bitcast<i32>(q << 24u), bitcast<i32>(q << 16u), bitcast<i32>(q << 8u), bitcast<i32>(q));
  return vec4<f32>(s >> vec4<u32>(24u));
}

fn prologue(lid: u32) {}

fn wload(wb: u32, k: u32) -> vec2<u32> { return w[wb + k]; }

fn wvals(q: vec2<u32>, wb: u32, k: u32) -> W8 { return W8(i4(q.x), i4(q.y)); }

fn scaled(row: u32, total: f32) -> f32 {
  let i = SB + row;
  return total * bitcast<f32>(w[i / 2u][i % 2u]);
}
