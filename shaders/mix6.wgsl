// v6 data-dependent mixes: out[t, j] = x'[t] + d[t] * (mu_j + m[t, j]) for the 5 targets (r k v g w),
// where mix1 = [x_x, d = x'_prev - x', x'] from ln_mix and m the time_maa LoRA output.

@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> mix1: array<f32>;         // [T, 3, C]
@group(0) @binding(2) var<storage, read> m: array<f32>;            // [T, 5, C]
@group(0) @binding(3) var<storage, read> vecs: array<f32>;         // mu_j at MU + j*C
@group(0) @binding(4) var<storage, read_write> out: array<f32>;    // [T, 5, C]

const C: u32 = {{C}}u;

@compute @workgroup_size({{WG}})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let c = gid.x;
  let t = gid.y;
  if (c >= C || t >= info[0]) { return; }
  let d = mix1[(t * 3u + 1u) * C + c];
  let a = mix1[(t * 3u + 2u) * C + c];
  for (var j = 0u; j < 5u; j++) {
    out[(t * 5u + j) * C + c] = a + d * (vecs[{{MU}}u + j * C + c] + m[(t * 5u + j) * C + c]);
  }
}
