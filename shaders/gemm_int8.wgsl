// int8 weights for gemm.wgsl: W rows are int8 (4 per u32, K/4 u32 a row) followed by one f32 scale per row
// at u32 index SB + row; tiles hold unscaled values, the scale is applied at the store.

const SB: u32 = {{SB}}u;

// four signed bytes of q (little-endian) as floats
fn i4(q: u32) -> vec4<f32> {
  let s = vec4<i32>(bitcast<i32>(q << 24u), bitcast<i32>(q << 16u), bitcast<i32>(q << 8u), bitcast<i32>(q));
  return vec4<f32>(s >> vec4<u32>(24u));
}

fn load_w(lid: u32, n0: u32, nr: u32, wr: u32, k0: u32, kend: u32) {
  for (var i = lid; i < TN * TK / 4u; i += WG) {
    let r = i / (TK / 4u);
    let kq = i % (TK / 4u);
    let n = n0 + r;
    var v = vec4<f32>(0.0);
    if (n < nr && k0 + 4u * kq < kend) { v = i4(w[(wr + n) * (K / 4u) + k0 / 4u + kq]); }
    for (var c = 0u; c < 4u; c++) {
      let a = (4u * kq + c) * WS + r;
      ws[a / 4u][a % 4u] = v[c];
    }
  }
}

fn scaled(row: u32, a: f32) -> f32 { return a * bitcast<f32>(w[SB + row]); }
