// Load-time quantization of a packed fp16 matrix (two halves per u32, element 2i in the low half)
// into the layouts gemv/gemm read; the FORMAT template value (int8 or nf4) picks the function that
// `main` runs. Bit for bit the numpy quantizers of webrwkv.quant: their divisions are correctly
// rounded f32, and WGSL's f32 division need not be, so every division here is an exact integer
// long division (div_rn).
//   int8: per row, scale = absmax / 127, q = clamp(round_half_even(w * (1 / scale)), -127, 127);
//         the destination holds rows of K bytes (4 per u32, little endian), then one f32 scale per row.
//   nf4:  per block of 64 along the row, scale = absmax, x = w * (1 / scale), code = how many
//         level midpoints are < x; rows of K/8 u32 (8 codes, low nibble first), then ceil(K/64)
//         f32 scales per row, row-major.
// An all-zero row / block gets scale 0 (and codes 0 / 7, the level 0.0).
struct Params {
  src_row: u32,   // first row in the fp16 buffer
  dst_row: u32,   // where that row goes in the destination buffer
  rows: u32,      // rows to quantize
  dst_rows: u32,  // rows of the destination buffer (its scales follow all its codes)
  k: u32,         // weights per row (a multiple of 8)
  gx: u32,        // workgroups along x (the grid is 2-D when there are more than 65535)
}
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<uniform> p: Params;

// Midpoints between consecutive NF4 levels as numpy computes them in float32 ((a + b) / 2): the template
// value NF4_MIDS, exact hexadecimal floats made from webrwkv.quant.NF4_MIDS.
const MIDS = array<f32, 15>({{NF4_MIDS}});

// fp16 bits -> f32, exact also for subnormal halves (whatever the GPU does with f32 denormals).
fn half(h: u32) -> f32 {
  let a = h & 0x7fffu;
  var v = bitcast<f32>((a << 13u) + 0x38000000u);
  if (a < 0x400u) { v = f32(a) * 5.9604644775390625e-8; }  // a * 2^-24
  return select(v, -v, (h & 0x8000u) != 0u);
}

// |fp16| bits (non-zero) as an integer mantissa and a power of two: value = m * 2^e.
fn half_parts(a: u32) -> vec2<i32> {
  let ex = i32((a >> 10u) & 31u);
  if (ex == 0) { return vec2<i32>(i32(a & 1023u), -24); }
  return vec2<i32>(i32((a & 1023u) | 1024u), ex - 25);
}

// num / den * 2^e rounded to nearest even f32, for 0 < num, den < 2^24 and a normal result.
fn div_rn(num: u32, den: u32, e: i32) -> f32 {
  var n = num;
  var d = den;
  var x = e;
  while (n < d) { n = n << 1u; x = x - 1; }
  while (n >= 2u * d) { d = d << 1u; x = x + 1; }
  // n / d is in [1, 2): 24 significant bits, then round on the remainder
  var q = 1u;
  var r = n - d;
  for (var i = 0u; i < 23u; i++) {
    r = r << 1u;
    q = q << 1u;
    if (r >= d) { r = r - d; q = q | 1u; }
  }
  let r2 = r << 1u;
  if (r2 > d || (r2 == d && (q & 1u) == 1u)) { q = q + 1u; }
  return ldexp(f32(q), x - 23);
}

fn abs_bits(w: u32) -> u32 { return max(w & 0x7fffu, (w >> 16u) & 0x7fffu); }

// One thread per row: absmax (as |fp16| bits, which order like the values), then 4 codes a step.
fn int8(wid: vec3<u32>, lid: u32) {
  let row = (wid.y * p.gx + wid.x) * {{WG}}u + lid;
  if (row >= p.rows) { return; }
  let hk = p.k / 2u;
  let s0 = (p.src_row + row) * hk;
  var a = 0u;
  for (var j = 0u; j < hk; j++) { a = max(a, abs_bits(src[s0 + j])); }
  var scale = 0.0;
  var inv = 0.0;
  if (a != 0u) {
    let me = half_parts(a);
    scale = div_rn(u32(me.x), 127u, me.y);
    let sb = bitcast<u32>(scale);  // scale = S * 2^(E - 150) with S the 24-bit significand
    inv = div_rn(1u, (sb & 0x7fffffu) | 0x800000u, 150 - i32(sb >> 23u));
  }
  let qk = p.k / 4u;
  let d0 = (p.dst_row + row) * qk;
  for (var j = 0u; j < qk; j++) {
    let u = src[s0 + 2u * j];
    let v = src[s0 + 2u * j + 1u];
    let x = vec4<f32>(half(u & 0xffffu), half(u >> 16u), half(v & 0xffffu), half(v >> 16u)) * inv;
    let q = bitcast<vec4<u32>>(vec4<i32>(clamp(round(x), vec4<f32>(-127.0), vec4<f32>(127.0)))) & vec4<u32>(255u);
    dst[d0 + j] = q.x | (q.y << 8u) | (q.z << 16u) | (q.w << 24u);
  }
  dst[p.dst_rows * qk + p.dst_row + row] = bitcast<u32>(scale);
}

// NF4 code of x: numpy searchsorted(MIDS, x), side left.
fn nf4_code(x: f32) -> u32 {
  var c = 0u;
  for (var i = 0u; i < 15u; i++) { c += select(0u, 1u, MIDS[i] < x); }
  return c;
}

// One thread per 64-weight block of a row.
fn nf4(wid: vec3<u32>, lid: u32) {
  let nb = (p.k + 63u) / 64u;
  let t = (wid.y * p.gx + wid.x) * {{WG}}u + lid;
  if (t >= p.rows * nb) { return; }
  let row = t / nb;
  let blk = t % nb;
  let hk = p.k / 2u;
  let w0 = (p.src_row + row) * hk + blk * 32u;
  let nw = min(32u, hk - blk * 32u);  // source words of this block (a multiple of 4)
  var a = 0u;
  for (var j = 0u; j < nw; j++) { a = max(a, abs_bits(src[w0 + j])); }
  var inv = 0.0;
  if (a != 0u) {
    let me = half_parts(a);
    inv = div_rn(1u, u32(me.x), -me.y);
  }
  let qk = p.k / 8u;
  let d0 = (p.dst_row + row) * qk + blk * 8u;
  for (var j = 0u; j < nw / 4u; j++) {
    var word = 0u;
    for (var i = 0u; i < 4u; i++) {
      let w = src[w0 + 4u * j + i];
      word = word | (nf4_code(half(w & 0xffffu) * inv) << (8u * i)) | (nf4_code(half(w >> 16u) * inv) << (8u * i + 4u));
    }
    dst[d0 + j] = word;
  }
  dst[p.dst_rows * qk + (p.dst_row + row) * nb + blk] = bitcast<u32>(half(a));
}

@compute @workgroup_size({{WG}})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
#if FORMAT == "int8"
  int8(wid, lid);
#else
  nf4(wid, lid);
#endif
}
