// Matrix x f32 vector for single tokens: y[t, col] (=, +=, += gate*) act(W[row_g + n] . x[t, g]).
// Group g (workgroup z) has g_nr(g) rows from W row g_row(g), reads X at g_x(g), writes from column g_col(g).
// Workgroup (row block of R rows, token t, group g); TPR threads per row, each reading 8 weights at a time.
// SUBGROUPS=1 reduces with subgroupAdd (needs subgroup size <= TPR). The weight format (gemv_fp16, gemv_int8
// or gemv_nf4, included by name) declares the binding `w` (K8 elements a row), prepares any workgroup tables
// (prologue, in uniform control flow), dots 8 weights with their activations (dot8) and applies any remaining
// scale to the row sum (scaled).
{{ENABLE}}
#include common

@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(2) var<storage, read> xv: array<vec4<f32>>;     // activations, as vec4
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
{{GATE_DECL}}

const K8: u32 = {{K}}u / 8u;
const R: u32 = {{R}}u;
const TPR: u32 = {{TPR}}u;

#include {{FORMAT}}

{{ACT}}
{{GROUPS}}

@compute @workgroup_size({{WG}})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32
        {{SG_ARGS}}) {
  let t = wid.y;
  if (t >= info[{{TSRC}}u]) { return; }
  let g = wid.z;
  let nl = lid / TPR;
  let j = lid % TPR;
  let n = wid.x * R + nl;
  let nr = g_nr(g);
  if (wid.x * R >= nr) { return; }
  prologue(lid);
  var acc = 0.0;
  if (n < nr) {
    let wb = (g_row(g) + n) * K8;
    let xb = ({{X_OFF}}u + t * {{X_TS}}u + g_x(g)) / 4u;
    // UNROLL independent 16-byte loads in flight per thread, then the remainder one at a time
    var k = j;
    for (; k + ({{UNROLL}}u - 1u) * TPR < K8; k += {{UNROLL}}u * TPR) {
{{UNROLLED}}
    }
    for (; k < K8; k += TPR) {
      acc += dot8(wb, xb, k);
    }
  }
  {{REDUCE}}
  if (j == 0u && n < nr) {
    let col = g_col(g) + n;
    let v = act(g, scaled(g_row(g) + n, total));
    {{EPILOGUE}}
  }
}
