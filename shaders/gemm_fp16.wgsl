// fp16 weights for gemm.wgsl: W rows of K/2 u32, two packed halves each.

// fill ws[k][n] with W rows n0.. (of nr) and columns k0.. (to kend), zeros past the ends
fn load_w(lid: u32, n0: u32, nr: u32, wr: u32, k0: u32, kend: u32) {
  for (var i = lid; i < TN * TK / 2u; i += WG) {
    let r = i / (TK / 2u);
    let kp = i % (TK / 2u);
    let n = n0 + r;
    var v = vec2<f32>(0.0);
    if (n < nr && k0 + 2u * kp < kend) { v = unpack2x16float(w[(wr + n) * (K / 2u) + k0 / 2u + kp]); }
    let a = (2u * kp) * WS + r;
    ws[a / 4u][a % 4u] = v.x;
    ws[(a + WS) / 4u][(a + WS) % 4u] = v.y;
  }
}

fn scaled(row: u32, a: f32) -> f32 { return a; }
