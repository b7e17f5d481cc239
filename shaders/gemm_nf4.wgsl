// NF4 weights for gemm.wgsl: W rows are 4-bit codes (8 per u32, low nibble first, K/8 u32 a row) indexing the
// NF4 levels, with one f32 scale per 64 weights of a row at u32 index SB + row * NB + k / 64; weights are
// dequantized (scaled) as the tile is loaded. TK must be a multiple of 8.

#include nf4

const NB: u32 = (K + 63u) / 64u;
const SB: u32 = {{SB}}u;

// the NF4 level of the 4-bit code at bit `b` of q
fn lv(q: u32, b: u32) -> f32 { return NF4[(q >> b) & 15u]; }

fn load_w(lid: u32, n0: u32, nr: u32, wr: u32, k0: u32, kend: u32) {
  for (var i = lid; i < TN * TK / 8u; i += WG) {
    let r = i / (TK / 8u);
    let kq = i % (TK / 8u);
    let n = n0 + r;
    let kw = k0 + 8u * kq;
    var q = 0x77777777u;  // code 7 is the level 0.0
    var s = 0.0;
    if (n < nr && kw < kend) {
      q = w[(wr + n) * (K / 8u) + kw / 8u];
      s = bitcast<f32>(w[SB + (wr + n) * NB + kw / 64u]);
    }
    for (var c = 0u; c < 8u; c++) {
      let a = (8u * kq + c) * WS + r;
      ws[a / 4u][a % 4u] = s * lv(q, 4u * c);
    }
  }
}

fn scaled(row: u32, a: f32) -> f32 { return a; }
