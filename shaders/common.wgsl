// Shared helpers (included by other kernels): workgroup sum, activations, step metadata.
// Step metadata `info` (u32): [0] T rows, [1] segments, [2] output rows, [3] token table offset,
// [4] output-row table offset; segment s at 8 + 4*s: (first row, row count, slot, 0).

var<workgroup> red: array<f32, {{WG}}>;

// Sum of `v` over the workgroup; call from uniform control flow.
fn wg_sum(v: f32, lid: u32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = {{WG}}u / 2u; s > 0u; s = s >> 1u) {
    if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

fn sigmoid(x: f32) -> f32 { return 1.0 / (1.0 + exp(-x)); }

// Half pair `i` of a packed fp16 row: element 2i in .x, 2i+1 in .y.
fn h2(w: u32) -> vec2<f32> { return unpack2x16float(w); }
