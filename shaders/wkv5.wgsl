// v5.2 / v6 time mixing: per head and segment, the matrix-state recurrence, then GroupNorm and gate.
// Thread i owns value column i of the head's state S[j, i] (j = key), in registers s0 .. s{HS-1}. Per row:
// y_i = sum_j r_j (u_j k_j v_i + S_ji); S_ji = w_j S_ji + k_j v_i; out = GN(y) * silu(g).
// v5: w = exp(-exp(time_decay)); v6 (DDLERP=1): w = exp(-exp(time_decay + dd[t])).
#include common

@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> proj: array<f32>;         // [T, 4, C] (r, k, v, g)
@group(0) @binding(2) var<storage, read> dd: array<f32>;           // [T, C] v6 decay LoRA output
@group(0) @binding(3) var<storage, read> vecs: array<f32>;
@group(0) @binding(4) var<storage, read_write> state: array<f32>;  // S at KV, [H, S, S]
@group(0) @binding(5) var<storage, read_write> y: array<f32>;      // [T, C]

const C: u32 = {{C}}u;
const HS: u32 = {{HS}}u;

var<workgroup> sr: array<f32, {{WG}}>;
var<workgroup> sk: array<f32, {{WG}}>;
var<workgroup> sw: array<f32, {{WG}}>;
var<workgroup> su: array<f32, {{WG}}>;

@compute @workgroup_size({{WG}})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) i: u32) {
  let h = wid.x;
  let s = wid.y;
  if (s >= info[1]) { return; }
  let seg0 = info[8u + 4u * s];
  let n = info[9u + 4u * s];
  let sb = info[10u + 4u * s] * {{SLOT}}u + {{KV}}u + h * HS * HS + i;
  let c = h * HS + i;
#for j in 0..HS
  var s${j} = state[sb + ${j}u * HS];
#endfor
  su[i] = vecs[{{FIRST}}u + c];
  let dec = vecs[{{DECAY}}u + c];
  sw[i] = exp(-exp(dec));
  let lxw = vecs[{{LNXW}}u + c];
  let lxb = vecs[{{LNXB}}u + c];
  for (var r = 0u; r < n; r++) {
    let t = seg0 + r;
    sr[i] = proj[t * {{PTS}}u + c];
    sk[i] = proj[t * {{PTS}}u + 1u * C + c];
    let v = proj[t * {{PTS}}u + 2u * C + c];
    let g = proj[t * {{PTS}}u + 3u * C + c];
    if ({{DDLERP}}u == 1u) { sw[i] = exp(-exp(dec + dd[t * C + c])); }
    workgroupBarrier();
    var acc = 0.0;
#for j in 0..HS
    { let kv = sk[${j}u] * v; acc += sr[${j}u] * (su[${j}u] * kv + s${j}); s${j} = sw[${j}u] * s${j} + kv; }
#endfor
    let mean = wg_sum(acc, i) / f32(HS);
    let d = acc - mean;
    let var_ = wg_sum(d * d, i) / f32(HS);
    let yn = d * inverseSqrt(var_ + {{EPS}}) * lxw + lxb;
    y[t * C + c] = yn * g / (1.0 + exp(-g));
  }
#for j in 0..HS
  state[sb + ${j}u * HS] = s${j};
#endfor
}
