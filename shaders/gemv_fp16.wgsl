// fp16 weights for gemv.wgsl: W rows of K/8 vec4<u32> (8 packed halves each).

@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;      // [rows, K/8]

fn prologue(lid: u32) {}

// the 8 weights of element k of the row starting at wb
fn wload(wb: u32, k: u32) -> vec4<u32> { return w[wb + k]; }

// 8 weights dotted with their activations
fn wdot(q: vec4<u32>, wb: u32, xb: u32, k: u32) -> f32 {
  return dot(vec4<f32>(h2(q.x), h2(q.y)), xv[xb + 2u * k]) + dot(vec4<f32>(h2(q.z), h2(q.w)), xv[xb + 2u * k + 1u]);
}

fn scaled(row: u32, total: f32) -> f32 { return total; }
