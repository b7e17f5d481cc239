// Split-K reduction for gemm.wgsl: sums the partial results of each slice per (token, W row), then applies the
// activation and epilogue of the matmul (store / add / gate / lerp) exactly as the unsplit kernel. SPLITS[i]
// is the split of a chunk of i + 1 tiles of TM tokens (one kernel for every chunk size).

@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> part: array<f32>;     // [SPLIT, max tokens, NTOT]
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

const NTOT: u32 = {{NTOT}}u;

#include matmul

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let r = gid.x;
  let t = gid.y;
  if (r >= NTOT || t >= info[{{TSRC}}u]) { return; }
  let tiles = (info[{{TSRC}}u] + {{TM}}u - 1u) / {{TM}}u;
  var split = 1u;
#for i in 0..NS
  if (tiles == ${i + 1}u) { split = ${SPLITS[i]}u; }
#endfor
  var a = 0.0;
  for (var s = 0u; s < split; s++) { a += part[(s * {{MAXT}}u + t) * NTOT + r]; }
  var g = 0u;
  for (var q = 1u; q < {{P}}u; q++) { if (r >= g_row(q)) { g = q; } }
  emit(t, g_col(g) + r - g_row(g), act(g, a));
}
