// Load-time conversion of a streamed tensor (raw file bytes in a GPU buffer) into rows of a
// packed fp16 matrix: f32/f16/bf16 in ({{SRC}} = 0/1/2), optionally stored transposed
// ({{TRANSPOSE}} = 1: canonical [R, K] rows kept as [K, R] per batch). One thread per output u32
// (two halves). f32 -> f16 rounds to nearest even, like numpy's astype(float16).
struct Params {
  shift: u32,     // source element offset (the tensor's first element inside the aligned bytes)
  src_r: u32,     // canonical rows per batch
  src_k: u32,     // canonical columns
  row0: u32,      // first canonical row (flat over batches) to convert
  nrows: u32,     // rows to convert
  dst_row0: u32,  // first destination row
  dst_kp: u32,    // destination row length in halves (even; columns >= src_k stay zero)
  words: u32,     // nrows * dst_kp / 2
}
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<uniform> p: Params;

fn half_bits(i: u32) -> u32 {
  return (src[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu;
}

fn f32_to_f16(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  let sign = (b >> 16u) & 0x8000u;
  let ex = (b >> 23u) & 0xffu;
  let m = b & 0x7fffffu;
  if (ex == 0xffu) { return sign | 0x7c00u | select(0u, 0x200u, m != 0u); }
  let e = i32(ex) - 112;
  if (e >= 31) { return sign | 0x7c00u; }
  if (e <= 0) {
    if (e < -10) { return sign; }
    let m24 = m | 0x800000u;
    let shift = u32(14 - e);
    var h = m24 >> shift;
    let rem = m24 & ((1u << shift) - 1u);
    let half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (h & 1u) == 1u)) { h = h + 1u; }
    return sign | h;
  }
  var h = (u32(e) << 10u) | (m >> 13u);
  let rem = m & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) == 1u)) { h = h + 1u; }
  return sign | h;
}

// fp16 bits of canonical element (flat row f, column c)
fn element(f: u32, c: u32) -> u32 {
  var i = f * p.src_k + c;
  if ({{TRANSPOSE}}u == 1u) {
    let b = f / p.src_r;
    let r = f % p.src_r;
    i = b * p.src_r * p.src_k + c * p.src_r + r;
  }
  i = i + p.shift;
  if ({{SRC}}u == 1u) { return half_bits(i); }
  if ({{SRC}}u == 2u) { return f32_to_f16(bitcast<f32>(half_bits(i) << 16u)); }
  return f32_to_f16(bitcast<f32>(src[i]));
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let w = gid.x + gid.y * nwg.x * 256u;
  if (w >= p.words) { return; }
  let half_k = p.dst_kp / 2u;
  let r = w / half_k;
  let c = (w % half_k) * 2u;
  var lo = 0u;
  var hi = 0u;
  if (c < p.src_k) { lo = element(p.row0 + r, c); }
  if (c + 1u < p.src_k) { hi = element(p.row0 + r, c + 1u); }
  dst[(p.dst_row0 + r) * half_k + c / 2u] = lo | (hi << 16u);
}
