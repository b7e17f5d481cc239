// Tiled fp16 matrix x f32 matrix for chunks of tokens: Y[t, col] (=, +=, += gate*) act(W[g*NR+n] . X[t, g]).
// Workgroup (TN output rows, TM tokens, group g); tiles of TK in shared memory; MM x 4 outputs per thread.

@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> w: array<u32>;            // [P*NR, K/2] packed fp16
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
{{GATE_DECL}}

const K: u32 = {{K}}u;
const NR: u32 = {{NR}}u;
const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
const TK: u32 = {{TK}}u;
const WG: u32 = {{WG}}u;
const MM: u32 = {{MM}}u;

var<workgroup> xs: array<vec4<f32>, {{TK}} * {{TM}} / 4>;   // [k][m]
var<workgroup> ws: array<vec4<f32>, {{TK}} * {{TN}} / 4>;   // [k][n]

fn sigmoid(x: f32) -> f32 { return 1.0 / (1.0 + exp(-x)); }
{{ACT}}

@compute @workgroup_size({{WG}})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let T = info[{{TSRC}}u];
  let m0 = wid.y * TM;
  if (m0 >= T) { return; }
  let n0 = wid.x * TN;
  let g = wid.z;
  let tm = lid % (TM / MM);
  let tn = lid / (TM / MM);
  let xb = {{X_OFF}}u + g * {{X_GS}}u;
  var acc: array<vec4<f32>, {{MM}}>;
  for (var k0 = 0u; k0 < K; k0 += TK) {
    for (var i = lid; i < TN * TK / 2u; i += WG) {
      let r = i / (TK / 2u);
      let kp = i % (TK / 2u);
      let n = n0 + r;
      var v = vec2<f32>(0.0);
      if (n < NR && k0 + 2u * kp < K) { v = unpack2x16float(w[(g * NR + n) * (K / 2u) + k0 / 2u + kp]); }
      let a = (2u * kp) * TN + r;
      ws[a / 4u][a % 4u] = v.x;
      ws[(a + TN) / 4u][(a + TN) % 4u] = v.y;
    }
    for (var i = lid; i < TM * TK; i += WG) {
      let m = i / TK;
      let kk = i % TK;
      var v = 0.0;
      if (m0 + m < T && k0 + kk < K) { v = x[xb + (m0 + m) * {{X_TS}}u + k0 + kk]; }
      let a = kk * TM + m;
      xs[a / 4u][a % 4u] = v;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < TK; kk++) {
      let b = ws[kk * (TN / 4u) + tn];
      for (var q = 0u; q < MM / 4u; q++) {
        let a = xs[kk * (TM / 4u) + tm * (MM / 4u) + q];
        acc[4u * q] += a.x * b;
        acc[4u * q + 1u] += a.y * b;
        acc[4u * q + 2u] += a.z * b;
        acc[4u * q + 3u] += a.w * b;
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < MM; i++) {
    let t = m0 + tm * MM + i;
    for (var jj = 0u; jj < 4u; jj++) {
      let n = n0 + tn * 4u + jj;
      if (t < T && n < NR) {
        let col = {{COL0}}u + g * NR + n;
        let v = act(g, acc[i][jj]);
        {{EPILOGUE}}
      }
    }
  }
}
