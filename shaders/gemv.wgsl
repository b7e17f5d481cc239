// Matrix x f32 vectors for a few tokens: y[t, col] (=, +=, += gate*) act(W[row_g + n] . x[t, g]), groups and
// epilogue as in matmul.wgsl. Workgroup (row block of R rows, MT tokens from wid.y * MT, group g); TPR threads
// per row, each reading 8 weights at a time, UNROLL loads in flight, and using each load for all MT tokens
// (a decode step of MT slots reads the weights once and turns them into floats once). SUBGROUPS=1 reduces with
// subgroup shuffles (up to TPR lanes), then partial sums through shared memory. The weight format (gemv_fp16,
// gemv_int8 or gemv_nf4, included by name) declares the binding `w` (K8 elements a row), prepares any workgroup
// tables (prologue, in uniform control flow), loads 8 weights (wload), turns them into floats (wvals, with any
// per-block scale) and applies any remaining scale to the row sum (scaled).
#if ENABLE_SUBGROUPS
enable subgroups;
#endif
#include common

@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(2) var<storage, read> xv: array<vec4<f32>>;     // activations, as vec4
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const K8: u32 = {{K}}u / 8u;
const R: u32 = {{R}}u;
const TPR: u32 = {{TPR}}u;
const MT: u32 = {{MT}}u;

struct W8 { lo: vec4<f32>, hi: vec4<f32> }  // 8 weights as floats

#include {{FORMAT}}
#include matmul

// 8 weights dotted with the activations of the token whose row starts at vec4 xb
fn wdot(v: W8, xb: u32, k: u32) -> f32 { return dot(v.lo, xv[xb + 2u * k]) + dot(v.hi, xv[xb + 2u * k + 1u]); }

@compute @workgroup_size({{WG}})
#if SUBGROUPS
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_size) sg_size: u32, @builtin(subgroup_invocation_id) sg_id: u32) {
#else
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
#endif
  let t0 = wid.y * MT;
  let T = info[{{TSRC}}u];
  if (t0 >= T) { return; }
  let g = wid.z;
  let nl = lid / TPR;
  let j = lid % TPR;
  let n = wid.x * R + nl;
  let nr = g_nr(g);
  if (wid.x * R >= nr) { return; }
  prologue(lid);
#for m in 0..MT
  var acc${m} = 0.0;
#endfor
  if (n < nr) {
    let wb = (g_row(g) + n) * K8;
#for m in 0..MT
    let xb${m} = ({{X_OFF}}u + min(t0 + ${m}u, T - 1u) * {{X_TS}}u + g_x(g)) / 4u;
#endfor
    // UNROLL independent 16-byte loads in flight per thread, then the remainder one at a time
    var k = j;
    for (; k + ({{UNROLL}}u - 1u) * TPR < K8; k += {{UNROLL}}u * TPR) {
#for u in 0..UNROLL
      let q${u} = wload(wb, k + ${u}u * TPR);
#endfor
#for u in 0..UNROLL
      let f${u} = wvals(q${u}, wb, k + ${u}u * TPR);
#for m in 0..MT
      acc${m} += wdot(f${u}, xb${m}, k + ${u}u * TPR);
#endfor
#endfor
    }
    for (; k < K8; k += TPR) {
      let f = wvals(wload(wb, k), wb, k);
#for m in 0..MT
      acc${m} += wdot(f, xb${m}, k);
#endfor
    }
  }
#for m in 0..MT
#if m > 0
  workgroupBarrier();  // the previous token's partial sums are read
#endif
#if SUBGROUPS
  // butterfly over the lanes of one subgroup (up to TPR wide), then the lanes' partials through shared memory
  let wd${m} = min(sg_size, TPR);
  var v${m} = acc${m};
  for (var b = 1u; b < wd${m}; b = b << 1u) { v${m} += subgroupShuffleXor(v${m}, b); }
  if (sg_id % wd${m} == 0u) { red[lid / wd${m}] = v${m}; }
  workgroupBarrier();
  var total${m} = 0.0;
  if (j == 0u) { let per = TPR / wd${m}; for (var q = 0u; q < per; q++) { total${m} += red[nl * per + q]; } }
#else
  red[lid] = acc${m};
  workgroupBarrier();
  for (var s = TPR / 2u; s > 0u; s = s >> 1u) { if (j < s) { red[lid] += red[lid + s]; } workgroupBarrier(); }
  let total${m} = red[lid];
#endif
#endfor
  if (j == 0u && n < nr) {
    let col = g_col(g) + n;
    let row = g_row(g) + n;
#for m in 0..MT
    if (t0 + ${m}u < T) { emit(t0 + ${m}u, col, act(g, scaled(row, total${m}))); }
#endfor
  }
}
