// Matrix x f32 vectors for a few tokens: y[t, col] (=, +=, += gate*) act(W[row_g + n] . x[t, g]), groups and
// epilogue as in matmul.wgsl. Workgroup (row block of R rows, MT tokens from t0, group g); TPR threads
// per row group of RPT rows, each reading 8 weights of each of its rows at a time, UNROLL loads in flight, and
// using each load for all MT tokens (a decode step of MT slots reads the weights once and turns them into
// floats once) and each activation load for all RPT rows. SUBGROUPS=1 reduces with subgroup shuffles (up to
// TPR lanes), then all sums' partials through shared memory at once (see below). The weight format (gemv_fp16,
// gemv_int8 or gemv_nf4, included by name) declares the binding `w` (K8 elements a row), prepares any
// workgroup tables (prologue, in uniform control flow), loads 8 weights (wload), turns them into floats
// (wvals, with any per-block scale) and applies any remaining scale to the row sum (scaled).
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
const RPT: u32 = {{RPT}}u;
#if SUBGROUPS
const NP: u32 = {{NP}}u;  // RPT x MT up to a power of two
#endif

#if SUBGROUPS
var<workgroup> part: array<f32, {{PART}}>;  // lane partials of every sum: (WG / 4) x NP at most
#endif

struct W8 { lo: vec4<f32>, hi: vec4<f32> }  // 8 weights as floats

fn dot8(f: W8, lo: vec4<f32>, hi: vec4<f32>) -> f32 { return dot(f.lo, lo) + dot(f.hi, hi); }

#include {{FORMAT}}
#include matmul

@compute @workgroup_size({{WG}})
#if SUBGROUPS
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_size) sg_size: u32, @builtin(subgroup_invocation_id) sg_id: u32) {
#else
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
#endif
  // TFIRST=1: the token groups of a row block are neighbours in the grid (x), so they run together and all but
  // the first read its weights from the L2 cache; else the row blocks are (x)
  let rb = select(wid.x, wid.y, {{TFIRST}}u == 1u);
  let t0 = select(wid.y, wid.x, {{TFIRST}}u == 1u) * MT;
  let T = info[{{TSRC}}u];
  if (t0 >= T) { return; }
  let g = wid.z;
  let nl = lid / TPR;
  let j = lid % TPR;
  let n = rb * R + nl * RPT;  // this thread's first row; rows past nr repeat the last one, unwritten
  let nr = g_nr(g);
  if (rb * R >= nr) { return; }
  prologue(lid);
#for r in 0..RPT
#for m in 0..MT
  var acc${r}_${m} = 0.0;
#endfor
#endfor
  if (n < nr) {
#for r in 0..RPT
    let wb${r} = (g_row(g) + min(n + ${r}u, nr - 1u)) * K8;
#endfor
#for m in 0..MT
    let xb${m} = ({{X_OFF}}u + min(t0 + ${m}u, T - 1u) * {{X_TS}}u + g_x(g)) / 4u;
#endfor
    // UNROLL x RPT independent 16-byte loads in flight per thread, then the remainder one k at a time
    var k = j;
    for (; k + ({{UNROLL}}u - 1u) * TPR < K8; k += {{UNROLL}}u * TPR) {
#for u in 0..UNROLL
#for r in 0..RPT
      let q${u}_${r} = wload(wb${r}, k + ${u}u * TPR);
#endfor
#endfor
#for u in 0..UNROLL
      let k${u} = k + ${u}u * TPR;
#for r in 0..RPT
      let f${u}_${r} = wvals(q${u}_${r}, wb${r}, k${u});
#endfor
#for m in 0..MT
      let xl${u}_${m} = xv[xb${m} + 2u * k${u}];
      let xh${u}_${m} = xv[xb${m} + 2u * k${u} + 1u];
#for r in 0..RPT
      acc${r}_${m} += dot8(f${u}_${r}, xl${u}_${m}, xh${u}_${m});
#endfor
#endfor
#endfor
    }
    for (; k < K8; k += TPR) {
#for r in 0..RPT
      let f${r} = wvals(wload(wb${r}, k), wb${r}, k);
#endfor
#for m in 0..MT
      let xl${m} = xv[xb${m} + 2u * k];
      let xh${m} = xv[xb${m} + 2u * k + 1u];
#for r in 0..RPT
      acc${r}_${m} += dot8(f${r}, xl${m}, xh${m});
#endfor
#endfor
    }
  }
#if SUBGROUPS
  // The RPT x MT sums (NP of them, zeros past RPT x MT) over the wd lanes of a subgroup, by exchanging halves:
  // at lane bit BITS[s] a lane keeps one half of its values and adds the other lane's copy of that half, so
  // after log2(wd) steps each lane holds NP / wd of the sums (31 shuffles for 32 sums, where a butterfly a sum
  // takes 160). Where wd > NP the last value finishes with a butterfly. Every lane's partials then go to
  // shared memory, one barrier for all, and the row group's lanes add them up and write the sums between them.
  let wd = min(sg_size, TPR);
  let per = TPR / wd;
  let ln = sg_id % wd;
#for i in 0..NP
#if i < RPT * MT
  var h0_${i} = acc${i / MT}_${i % MT};
#else
  var h0_${i} = 0.0;
#endif
#endfor
#for s in 0..LN
#for i in 0..HALF[s]
  var h${s + 1}_${i} = 0.0;
#endfor
  if (wd > ${BITS[s]}u) {
    let up${s} = (ln & ${BITS[s]}u) != 0u;
#for i in 0..HALF[s]
    h${s + 1}_${i} = select(h${s}_${i}, h${s}_${i + HALF[s]}, up${s})
                   + subgroupShuffleXor(select(h${s}_${i + HALF[s]}, h${s}_${i}, up${s}), ${BITS[s]}u);
#endfor
  }
#endfor
  let base = (lid / wd) * NP;
#for k in 0..LN + 1
#if k < LN
  if (wd == ${BITS[k]}u) {  // stopped after k steps
#else
  if (wd >= NP) {
    for (var b = NP; b < wd; b = b << 1u) { h${k}_0 += subgroupShuffleXor(h${k}_0, b); }
#endif
    var off${k} = 0u;  // the first sum this lane holds
#for s in 0..k
    if ((ln & ${BITS[s]}u) != 0u) { off${k} += ${HALF[s]}u; }
#endfor
    if (ln < NP) {
#for i in 0..CNT[k]
      part[base + off${k} + ${i}u] = h${k}_${i};
#endfor
    }
  }
#endfor
  workgroupBarrier();
  // lane j of a row group adds up and writes sums j, j + TPR, ... (not one lane all RPT x MT of them)
  for (var i = j; i < RPT * MT; i += TPR) {
    var total = 0.0;
    for (var q = 0u; q < per; q++) { total += part[(nl * per + q) * NP + i]; }
    let row = n + i / MT;
    let t = t0 + i % MT;
    if (row < nr && t < T) { emit(t, g_col(g) + row, act(g, scaled(g_row(g) + row, total))); }
  }
#else
#for r in 0..RPT
#for m in 0..MT
#if r > 0 or m > 0
  workgroupBarrier();  // the previous sum's partials are read
#endif
  red[lid] = acc${r}_${m};
  workgroupBarrier();
  for (var s = TPR / 2u; s > 0u; s = s >> 1u) { if (j < s) { red[lid] += red[lid + s]; } workgroupBarrier(); }
  let total${r}_${m} = red[lid];
#endfor
#endfor
  if (j == 0u) {
#for r in 0..RPT
    if (n + ${r}u < nr) {
      let col${r} = g_col(g) + n + ${r}u;
      let row${r} = g_row(g) + n + ${r}u;
#for m in 0..MT
      if (t0 + ${m}u < T) { emit(t0 + ${m}u, col${r}, act(g, scaled(row${r}, total${r}_${m}))); }
#endfor
    }
#endfor
  }
#endif
}
