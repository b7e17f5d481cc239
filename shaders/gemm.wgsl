// Tiled matrix x f32 matrix for chunks of tokens: Y[t, col] (=, +=, += gate*) act(W[row_g + n] . X[t, g]),
// with groups as in gemv.wgsl. The weight format (gemm_fp16, gemm_int8 or gemm_nf4, included by name) lays out
// the binding `w`, loads a tile of W into `ws` (load_w) and applies any remaining scale at the store (scaled).
// Workgroup (TN output rows, TM tokens, group g); tiles of TK in shared memory; MM x NN outputs per thread
// written out by #for. MODE "partial" (split K) writes raw partial sums of slice ks for gemm_sum.wgsl; the
// dispatch's x size (NXT x the split) says how many slices, so one kernel serves every split of its matrix.

@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> w: array<u32>;            // weights (see the format)
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const K: u32 = {{K}}u;
const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
const TK: u32 = {{TK}}u;
const WG: u32 = {{WG}}u;
const MM: u32 = {{MM}}u;
const NN: u32 = {{NN}}u;
// floats per k of the tiles: 4 more than a row of them, so that the loads' stores (consecutive threads take
// consecutive k) fall into different shared-memory banks instead of all into one
const XS: u32 = TM + 4u;
const WS: u32 = TN + 4u;

var<workgroup> xs: array<vec4<f32>, TK * XS / 4u>;   // [k][m]
var<workgroup> ws: array<vec4<f32>, TK * WS / 4u>;   // [k][n]

#include {{FORMAT}}
#include matmul

@compute @workgroup_size({{WG}})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
        @builtin(num_workgroups) nwg: vec3<u32>) {
  let T = info[{{TSRC}}u];
  let m0 = wid.y * TM;
  if (m0 >= T) { return; }
  let ks = wid.x / {{NXT}}u;  // split-K slice (a split matmul writes raw partial sums)
  let n0 = (wid.x % {{NXT}}u) * TN;
  let split = nwg.x / {{NXT}}u;
  let kc = (K + split * TK - 1u) / (split * TK) * TK;  // K per slice, TK-aligned
  let kbeg = ks * kc;
  let kend = min(K, kbeg + kc);
  let g = wid.z;
  let nr = g_nr(g);
  if (n0 >= nr) { return; }
  let wr = g_row(g);
  let tm = lid % (TM / MM);
  let tn = lid / (TM / MM);
  let xb = {{X_OFF}}u + g_x(g);
#for i in 0..MM
#for q in 0..NN / 4
  var c${i}_${q} = vec4<f32>(0.0);
#endfor
#endfor
  for (var k0 = kbeg; k0 < kend; k0 += TK) {
    load_w(lid, n0, nr, wr, k0, kend);
    for (var i = lid; i < TM * TK; i += WG) {
      let m = i / TK;
      let kk = i % TK;
      var v = 0.0;
      if (m0 + m < T && k0 + kk < kend) { v = x[xb + (m0 + m) * {{X_TS}}u + k0 + kk]; }
      let a = kk * XS + m;
      xs[a / 4u][a % 4u] = v;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < TK; kk++) {
#for q in 0..NN / 4
      let b${q} = ws[kk * (WS / 4u) + tn * ${NN / 4}u + ${q}u];
#endfor
#for p in 0..MM / 4
      let a${p} = xs[kk * (XS / 4u) + tm * ${MM / 4}u + ${p}u];
#endfor
#for i in 0..MM
#for q in 0..NN / 4
      c${i}_${q} += a${i / 4}.${"xyzw"[i % 4]} * b${q};
#endfor
#endfor
    }
    workgroupBarrier();
  }
#for i in 0..MM
#for q in 0..NN / 4
#for c in 0..4
  store(m0 + tm * ${MM}u + ${i}u, n0 + tn * ${NN}u + ${4 * q + c}u, T, g, c${i}_${q}.${"xyzw"[c]}, ks);
#endfor
#endfor
#endfor
}

fn store(t: u32, n: u32, T: u32, g: u32, a: f32, ks: u32) {
  if (t < T && n < g_nr(g)) {
#if MODE == "partial"
    y[(ks * {{MAXT}}u + t) * {{NTOT}}u + g_row(g) + n] = scaled(g_row(g) + n, a);
#else
    emit(t, g_col(g) + n, act(g, scaled(g_row(g) + n, a)));
#endif
  }
}
