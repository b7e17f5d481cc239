// fp16 weights for gemv.wgsl: W rows of K/8 vec4<u32> (8 packed halves each).

@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;      // [rows, K/8]

fn prologue(lid: u32) {}

// 8 weights (element k of the row starting at wb) dotted with their activations
fn dot8(wb: u32, xb: u32, k: u32) -> f32 {
  let q = w[wb + k];
  let a = xv[xb + 2u * k];
  let b = xv[xb + 2u * k + 1u];
  return dot(vec4<f32>(h2(q.x), h2(q.y)), a) + dot(vec4<f32>(h2(q.z), h2(q.w)), b);
}

fn scaled(row: u32, total: f32) -> f32 { return total; }
