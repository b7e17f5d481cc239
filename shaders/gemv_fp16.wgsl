// fp16 weights for gemv.wgsl: W rows of K/8 vec4<u32> (8 packed halves each).

@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;      // [rows, K/8]

fn prologue(lid: u32) {}

// the 8 weights of element k of the row starting at wb
fn wload(wb: u32, k: u32) -> vec4<u32> { return w[wb + k]; }

// the 8 weights as floats
fn wvals(q: vec4<u32>, wb: u32, k: u32) -> W8 { return W8(vec4<f32>(h2(q.x), h2(q.y)), vec4<f32>(h2(q.z), h2(q.w))); }

fn scaled(row: u32, total: f32) -> f32 { return total; }
