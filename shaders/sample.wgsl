// The next token of every slot of a decode step, on the GPU (webrwkv.sampling is the reference): penalties and
// bans, then greedy (argmax, the lowest id among equal maxima) or the candidates of top-k / top-p / min-p on
// w = exp(x - max) (ties at a boundary are kept), reshaped by the temperature and drawn in id order with the
// counter-based uniform(seed, stream, step). The chosen id becomes the slot's next input token (the step's
// token table) and is appended to the slot's ring of ids; decayed penalty counts are updated.
// One workgroup per output row; output row i is segment i (one token each). A thread takes four consecutive ids
// at a time (the scratch rows z and w are vec4), and every pass over the vocabulary issues U independent loads
// per thread and iteration (#for): one scalar load at a time leaves the workgroup waiting on memory latency (a
// 30-pass top-p search took 1.6 ms on an H200 that way).

@group(0) @binding(0) var<storage, read_write> info: array<u32>;   // step metadata (tokens rewritten)
@group(0) @binding(1) var<storage, read> logits: array<f32>;       // [n_out, VOCAB]
@group(0) @binding(2) var<storage, read> params: array<u32>;       // [slots, 16]: see below
@group(0) @binding(3) var<storage, read_write> st: array<u32>;     // [slots, STRIDE]: see below
@group(0) @binding(4) var<storage, read_write> ids: array<u32>;    // [slots, CAP + 2]: count, error, ring of ids
@group(0) @binding(5) var<storage, read_write> sc: array<vec4<f32>>;  // [slots, 2, V4]: z = x - max, w = exp(z)

const VOCAB: u32 = {{VOCAB}}u;
const WG: u32 = {{WG}}u;
const U: u32 = {{U}}u;                       // loads in flight per thread in a pass
const TOK0: u32 = {{TOK0}}u;
const CAP: u32 = {{CAP}}u;
const NW: u32 = (VOCAB + 31u) / 32u;         // words of a bit set over the vocabulary
const COUNTS: u32 = 8u;                      // a slot's state: [0] draws so far, decayed counts (f32),
const SEEN: u32 = COUNTS + VOCAB;            // the bit set of ids generated, the bit set of banned ids
const BANNED: u32 = SEEN + NW;
const STRIDE: u32 = BANNED + NW;
const V4: u32 = (VOCAB + 3u) / 4u;           // vec4 of a scratch row (ids past the vocabulary: z = LOWEST)
const CH: u32 = (V4 + WG - 1u) / WG;         // vec4 per thread in the draw (a contiguous chunk each)
const D: u32 = {{D}}u;                       // of which loaded at once
const K: u32 = {{K}}u;                       // thresholds a pass of the top-k / top-p search tries
const R: u32 = min(WG, 256u);                // lanes of that search's sums (K x R floats of workgroup memory)
const LOWEST = -0x1.fffffep+127f;            // a banned id's logit (-inf has no WGSL constant; exp gives 0 alike)
// params of a slot (u32 words): temperature, top_p, top_k, min_p, presence, frequency, decay (f32 bits),
// seed lo, seed hi, stream, vocab limit, flags (1: penalties active, 2: some ids banned)

var<workgroup> sh_u: array<u32, 4>;
var<workgroup> sh_f: array<f32, WG>;
var<workgroup> sh_i: array<u32, WG>;
var<workgroup> sh_q: array<f32, K * R>;

fn pcg(v: u32) -> u32 {
  let state = v * 747796405u + 2891336453u;
  let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
  return (word >> 22u) ^ word;
}

fn uniform01(seed_lo: u32, seed_hi: u32, stream: u32, step: u32) -> f32 {
  var h = pcg(step);
  h = pcg(h ^ stream);
  h = pcg(h ^ seed_lo);
  h = pcg(h ^ seed_hi);
  return f32(h >> 8u) / 16777216.0;
}

// sum of v over the workgroup, as a uniform value (it steers loops that hold barriers)
fn usum(v: f32, lid: u32) -> f32 {
  sh_f[lid] = v;
  workgroupBarrier();
  for (var w = WG / 2u; w > 0u; w = w >> 1u) {
    if (lid < w) { sh_f[lid] = sh_f[lid] + sh_f[lid + w]; }
    workgroupBarrier();
  }
  let r = workgroupUniformLoad(&sh_f[0]);
  workgroupBarrier();
  return r;
}

fn bit(base: u32, c: u32) -> bool { return ((st[base + c / 32u] >> (c % 32u)) & 1u) == 1u; }

// the largest f32 bits t in [0, 1] whose weights reach `goal`: mass(w >= t) (mass) or count(w >= t). A pass
// tries K thresholds spread over [lo, hi) and keeps the gap between the last that reaches the goal and the next,
// so the range shrinks (K + 1)-fold a pass where a bisection halves it: 13 passes over the vocabulary with K = 4,
// not 30. Every threshold's sum is added up in the same order (f falls as t grows), so the result is the bisection's.
fn search(wb: u32, n4: u32, lid: u32, goal: f32, mass: bool) -> f32 {
  var lo = 0u;
  var hi = 0x3f800001u;  // f(lo) >= goal > f(hi): w <= 1
  loop {
    if (hi - lo <= 1u) { break; }
    let step = max((hi - lo) / (K + 1u), 1u);  // probe p is lo + step (p + 1); those at or past hi fail
#for p in 0..K
    let b${p} = lo + step * ${p + 1}u;
    let t${p} = bitcast<f32>(b${p});
    var q${p} = 0.0;
#endfor
    for (var c0 = lid; c0 < n4; c0 += U * WG) {
#for j in 0..U
      // ids past the vocabulary have w = 0, below every probe (probes are > 0)
      let w${j} = select(vec4<f32>(0.0), sc[wb + min(c0 + ${j}u * WG, n4 - 1u)], c0 + ${j}u * WG < n4);
      let a${j} = select(vec4<f32>(1.0), w${j}, mass);
#endfor
#for j in 0..U
#for p in 0..K
      q${p} += dot(select(vec4<f32>(0.0), a${j}, w${j} >= vec4<f32>(t${p})), vec4<f32>(1.0));
#endfor
#endfor
    }
    // the threads' sums folded into R lanes, then a tree over the lanes: the K sums at once
    for (var r = 0u; r < WG / R; r++) {
      if (lid / R == r) {
#for p in 0..K
        sh_q[${p}u * R + lid % R] = select(sh_q[${p}u * R + lid % R] + q${p}, q${p}, r == 0u);
#endfor
      }
      workgroupBarrier();
    }
    for (var w = R / 2u; w > 0u; w = w >> 1u) {
      for (var e = lid; e < K * w; e += WG) {
        let b = (e / w) * R + e % w;
        sh_q[b] = sh_q[b] + sh_q[b + w];
      }
      workgroupBarrier();
    }
    if (lid == 0u) {
      var nlo = lo;
      var nhi = hi;
#for p in 0..K
      if (b${p} < hi) {
        if (sh_q[${p}u * R] >= goal) { nlo = b${p}; } else { nhi = min(nhi, b${p}); }
      }
#endfor
      sh_u[0] = nlo;
      sh_u[1] = nhi;
    }
    lo = workgroupUniformLoad(&sh_u[0]);
    hi = workgroupUniformLoad(&sh_u[1]);
  }
  return bitcast<f32>(lo);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = wid.x;
  if (lid == 0u) {
    sh_u[0] = select(0u, 1u, i < info[1]);
    sh_u[1] = info[10u + 4u * i];  // slot
    sh_u[2] = info[8u + 4u * i];   // token row
  }
  if (workgroupUniformLoad(&sh_u[0]) == 0u) { return; }
  let s = workgroupUniformLoad(&sh_u[1]);
  let trow = workgroupUniformLoad(&sh_u[2]);
  let pb = s * 16u;
  let temp = bitcast<f32>(params[pb]);
  let top_p = bitcast<f32>(params[pb + 1u]);
  let top_k = params[pb + 2u];
  let min_p = bitcast<f32>(params[pb + 3u]);
  let pres = bitcast<f32>(params[pb + 4u]);
  let freq = bitcast<f32>(params[pb + 5u]);
  let decay = bitcast<f32>(params[pb + 6u]);
  let V = min(params[pb + 10u], VOCAB);
  let penal = (params[pb + 11u] & 1u) == 1u;
  let bans = (params[pb + 11u] & 2u) == 2u;
  let greedy = temp == 0.0 || top_k == 1u;
  let sb = s * STRIDE;
  let zb = s * 2u * V4;   // this slot's scratch: z at zb, w at zb + V4
  let n4 = (V + 3u) / 4u;

  // adjusted logits x (bans, penalties) into z when sampling; the largest (lowest id among equals); NaN / +inf
  var m = LOWEST;
  var mi = VOCAB;
  var bad = 0u;
  for (var c0 = lid; c0 < n4; c0 += U * WG) {
#for j in 0..U
    let b${j} = 4u * min(c0 + ${j}u * WG, n4 - 1u);
    var x${j} = vec4<f32>(logits[i * VOCAB + min(b${j}, V - 1u)], logits[i * VOCAB + min(b${j} + 1u, V - 1u)],
                          logits[i * VOCAB + min(b${j} + 2u, V - 1u)], logits[i * VOCAB + min(b${j} + 3u, V - 1u)]);
#endfor
#for j in 0..U
    if (c0 + ${j}u * WG < n4) {
#for e in 0..4
      {
        let c = b${j} + ${e}u;
        var v = x${j}.${"xyzw"[e]};
        let xb = bitcast<u32>(v);  // NaN and +inf by their bits: compilers may assume floats are finite
        if (c < V) {
          if ((xb & 0x7fffffffu) > 0x7f800000u || xb == 0x7f800000u) { bad = 1u; }
          if (penal && bit(sb + SEEN, c)) { v = v - (pres + freq * bitcast<f32>(st[sb + COUNTS + c])); }
          if (bans && bit(sb + BANNED, c)) { v = LOWEST; }
          if (v > m || (mi == VOCAB && v == m)) { m = v; mi = c; }
        } else {
          v = LOWEST;
        }
        x${j}.${"xyzw"[e]} = v;
      }
#endfor
      if (!greedy) { sc[zb + c0 + ${j}u * WG] = x${j}; }
    }
#endfor
  }
  sh_f[lid] = m;
  sh_i[lid] = mi | (bad << 31u);
  workgroupBarrier();
  for (var w = WG / 2u; w > 0u; w = w >> 1u) {
    if (lid < w) {
      let om = sh_f[lid + w];
      let oi = sh_i[lid + w] & 0x7fffffffu;
      let mine = sh_i[lid] & 0x7fffffffu;
      let flag = (sh_i[lid] | sh_i[lid + w]) & 0x80000000u;
      if (oi < VOCAB && (mine == VOCAB || om > sh_f[lid] || (om == sh_f[lid] && oi < mine))) {
        sh_f[lid] = om;
        sh_i[lid] = oi | flag;
      } else {
        sh_i[lid] = mine | flag;
      }
    }
    workgroupBarrier();
  }
  let top = workgroupUniformLoad(&sh_f[0]);
  let packed = workgroupUniformLoad(&sh_i[0]);
  var pick = packed & 0x7fffffffu;
  let ib = s * (CAP + 2u);
  if ((packed >> 31u) == 1u || top <= LOWEST) {
    if (lid == 0u) { ids[ib + 1u] = select(2u, 1u, (packed >> 31u) == 1u); }  // 1: NaN / inf logits, 2: all banned
    return;
  }
  if (!greedy) {
    var tot = 0.0;
    for (var c0 = lid; c0 < n4; c0 += U * WG) {
#for j in 0..U
      let z${j} = sc[zb + min(c0 + ${j}u * WG, n4 - 1u)];
#endfor
#for j in 0..U
      if (c0 + ${j}u * WG < n4) {
        let w = exp(z${j} - vec4<f32>(top));  // 0 past the vocabulary and for banned ids (z = LOWEST)
        sc[zb + V4 + c0 + ${j}u * WG] = w;
        tot += dot(w, vec4<f32>(1.0));
      }
#endfor
    }
    let total = usum(tot, lid);
    // candidates: w >= t, t the largest of min_p, the top_k-th weight and the top-p weight
    var t = min_p;
    if (top_k > 0u && top_k < V) { t = max(t, search(zb + V4, n4, lid, f32(top_k), false)); }
    if (top_p < 1.0) { t = max(t, search(zb + V4, n4, lid, top_p * total, true)); }
    // draw in id order: each thread sums its chunk, a scan over the threads, then the chunk holding u * Q
    // (a chunk's vec4 D at a time: loads first, then the sums in id order)
    let c0 = min(n4, lid * CH);
    let c1 = min(n4, c0 + CH);
    var part = 0.0;
    var c = c0;
    for (; c + D <= c1; c += D) {
#for j in 0..D
      let dw${j} = sc[zb + V4 + c + ${j}u];
      let dz${j} = sc[zb + c + ${j}u];
#endfor
#for j in 0..D
#for e in 0..4
      if (4u * (c + ${j}u) + ${e}u < V && dw${j}.${"xyzw"[e]} >= t) { part += exp((dz${j}.${"xyzw"[e]} - top) / temp); }
#endfor
#endfor
    }
    for (; c < c1; c++) {
      let dw = sc[zb + V4 + c];
      let dz = sc[zb + c];
#for e in 0..4
      if (4u * c + ${e}u < V && dw.${"xyzw"[e]} >= t) { part += exp((dz.${"xyzw"[e]} - top) / temp); }
#endfor
    }
    sh_f[lid] = part;
    workgroupBarrier();
    for (var w = 1u; w < WG; w = w << 1u) {  // inclusive scan (Hillis-Steele)
      var v = sh_f[lid];
      if (lid >= w) { v += sh_f[lid - w]; }
      workgroupBarrier();
      sh_f[lid] = v;
      workgroupBarrier();
    }
    let incl = sh_f[lid];
    let before = select(0.0, sh_f[max(lid, 1u) - 1u], lid > 0u);
    let all = sh_f[WG - 1u];
    let goal = uniform01(params[pb + 7u], params[pb + 8u], params[pb + 9u], st[sb]) * all;
    if (lid == 0u) { sh_u[3] = pick; }
    workgroupBarrier();
    // exactly one thread holds the goal: before <= goal < incl, or (rounding) the last one with candidates
    if (part > 0.0 && before <= goal && (goal < incl || incl >= all)) {
      var acc = before;
      var last = 4u * c0;
      var found = false;
      for (var g = c0; g < c1 && !found; g++) {
        let gw = sc[zb + V4 + g];
        let gz = sc[zb + g];
#for e in 0..4
        if (!found && 4u * g + ${e}u < V && gw.${"xyzw"[e]} >= t) {
          acc += exp((gz.${"xyzw"[e]} - top) / temp);
          last = 4u * g + ${e}u;
          found = acc > goal;
        }
#endfor
      }
      sh_u[3] = last;
    }
    pick = workgroupUniformLoad(&sh_u[3]);
  }
  // penalties: decay every count, then count the pick
  if (penal) {
    for (var c = lid; c < V; c += WG) {
      st[sb + COUNTS + c] = bitcast<u32>(bitcast<f32>(st[sb + COUNTS + c]) * decay);
    }
  }
  workgroupBarrier();
  if (lid == 0u) {
    if (penal) {
      st[sb + COUNTS + pick] = bitcast<u32>(bitcast<f32>(st[sb + COUNTS + pick]) + 1.0);
      st[sb + SEEN + pick / 32u] = st[sb + SEEN + pick / 32u] | (1u << (pick % 32u));
    }
    st[sb] = st[sb] + 1u;
    info[TOK0 + trow] = pick;
    let n = ids[ib];
    ids[ib + 2u + n % CAP] = pick;
    ids[ib] = n + 1u;
  }
}
