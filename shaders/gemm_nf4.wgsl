// Tiled NF4 matrix x f32 matrix for chunks of tokens: as gemm_int8.wgsl, but W rows are 4-bit codes (8 per u32,
// low nibble first) indexing the NF4 levels, with one f32 scale per 64 weights of a row at u32 index
// SB + row * NB + k / 64; weights are dequantized (scaled) as the tile is loaded. TK must be a multiple of 8.

@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> w: array<u32>;            // [rows, K/8] codes, then [rows, NB] f32 scales
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
{{GATE_DECL}}

const K: u32 = {{K}}u;
const NB: u32 = ({{K}}u + 63u) / 64u;
const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
const TK: u32 = {{TK}}u;
const WG: u32 = {{WG}}u;
const MM: u32 = {{MM}}u;
const NN: u32 = {{NN}}u;
const SB: u32 = {{SB}}u;

const NF4 = array<f32, 16>(-1.0, -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734, -0.0910500, 0.0,
                           0.0795803, 0.1609302, 0.2461123, 0.3379152, 0.4407098, 0.5626170, 0.7229568, 1.0);

var<workgroup> xs: array<vec4<f32>, {{TK}} * {{TM}} / 4>;   // [k][m]
var<workgroup> ws: array<vec4<f32>, {{TK}} * {{TN}} / 4>;   // [k][n]

fn sigmoid(x: f32) -> f32 { return 1.0 / (1.0 + exp(-x)); }

// the NF4 level of the 4-bit code at bit `b` of q
fn lv(q: u32, b: u32) -> f32 { return NF4[(q >> b) & 15u]; }
{{ACT}}
{{GROUPS}}

@compute @workgroup_size({{WG}})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let T = info[{{TSRC}}u];
  let m0 = wid.y * TM;
  if (m0 >= T) { return; }
  let ks = wid.x / {{NXT}}u;  // split-K slice (a split matmul writes raw partial sums)
  let n0 = (wid.x % {{NXT}}u) * TN;
  let kbeg = ks * {{KC}}u;
  let kend = min(K, kbeg + {{KC}}u);
  let g = wid.z;
  let nr = g_nr(g);
  if (n0 >= nr) { return; }
  let wr = g_row(g);
  let tm = lid % (TM / MM);
  let tn = lid / (TM / MM);
  let xb = {{X_OFF}}u + g_x(g);
{{ACC_DECL}}
  for (var k0 = kbeg; k0 < kend; k0 += TK) {
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
        let a = (8u * kq + c) * TN + r;
        ws[a / 4u][a % 4u] = s * lv(q, 4u * c);
      }
    }
    for (var i = lid; i < TM * TK; i += WG) {
      let m = i / TK;
      let kk = i % TK;
      var v = 0.0;
      if (m0 + m < T && k0 + kk < kend) { v = x[xb + (m0 + m) * {{X_TS}}u + k0 + kk]; }
      let a = kk * TM + m;
      xs[a / 4u][a % 4u] = v;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < TK; kk++) {
{{INNER}}
    }
    workgroupBarrier();
  }
{{STORE}}
}

fn store(t: u32, n: u32, T: u32, g: u32, a: f32, ks: u32) {
  if (t < T && n < g_nr(g)) {
    let col = g_col(g) + n;
    let v = act(g, a);
    {{EPILOGUE}}
  }
}
