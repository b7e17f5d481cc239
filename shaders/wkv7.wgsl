// v7 time mixing: per head and segment, the generalized delta-rule recurrence, GroupNorm,
// the r.k bonus and the gate. Thread i owns value row i of the state S[j, i] (j = key), in registers s0 .. s{HS-1}.
// Inputs: proj = [v, r, k], lora = [w, a, g, v] LoRA outputs (v only after layer 0).
#include common

@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> proj: array<f32>;         // [T, 3, C] (v, r, k)
@group(0) @binding(2) var<storage, read> lora: array<f32>;         // [T, NL, C] (w, a, g[, v])
@group(0) @binding(3) var<storage, read> vecs: array<f32>;
@group(0) @binding(4) var<storage, read_write> state: array<f32>;  // S at KV, [H, S, S]
@group(0) @binding(5) var<storage, read_write> vfirst: array<f32>; // [T, C] layer 0's v
@group(0) @binding(6) var<storage, read_write> y: array<f32>;      // [T, C]

const C: u32 = {{C}}u;
const HS: u32 = {{HS}}u;
const NL: u32 = {{NL}}u;

var<workgroup> sr: array<f32, {{WG}}>;
var<workgroup> sk: array<f32, {{WG}}>;
var<workgroup> sw: array<f32, {{WG}}>;
var<workgroup> skk: array<f32, {{WG}}>;
var<workgroup> sab: array<f32, {{WG}}>;

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
  let w0 = vecs[{{W0}}u + c];
  let a0 = vecs[{{A0}}u + c];
  let kkw = vecs[{{KK}}u + c];
  let kaw = vecs[{{KA}}u + c];
  let rk = vecs[{{RK}}u + c];
  let v0 = vecs[{{V0}}u + c];
  let lxw = vecs[{{LNXW}}u + c];
  let lxb = vecs[{{LNXB}}u + c];
  for (var r = 0u; r < n; r++) {
    let t = seg0 + r;
    var v = proj[t * {{PTS}}u + c];
    let rr = proj[t * {{PTS}}u + 1u * C + c];
    var k = proj[t * {{PTS}}u + 2u * C + c];
    let lb = t * NL * C + c;
    let w = exp(-0.6065306597126334 / (1.0 + exp(-(w0 + lora[lb]))));
    let a = 1.0 / (1.0 + exp(-(a0 + lora[lb + C])));
    let g = lora[lb + 2u * C];
    if ({{LAYER0}}u == 1u) {
      vfirst[t * C + c] = v;
    } else {
      let vg = 1.0 / (1.0 + exp(-(v0 + lora[lb + 3u * C])));
      v = v + (vfirst[t * C + c] - v) * vg;
    }
    let kk = k * kkw;
    let nrm = sqrt(wg_sum(kk * kk, i));
    let kn = kk / max(nrm, 1e-12);
    k = k * (1.0 + (a - 1.0) * kaw);
    sr[i] = rr;
    sk[i] = k;
    sw[i] = w;
    skk[i] = kn;
    sab[i] = kn * a;
    workgroupBarrier();
    var sa = 0.0;
#for j in 0..HS
    sa -= s${j} * skk[${j}u];
#endfor
    var acc = 0.0;
#for j in 0..HS
    s${j} = s${j} * sw[${j}u] + sk[${j}u] * v + sa * sab[${j}u];
    acc += sr[${j}u] * s${j};
#endfor
    let bonus = wg_sum(rr * k * rk, i);
    let mean = wg_sum(acc, i) / f32(HS);
    let d = acc - mean;
    let var_ = wg_sum(d * d, i) / f32(HS);
    let yn = d * inverseSqrt(var_ + {{EPS}}) * lxw + lxb;
    y[t * C + c] = (yn + bonus * v) * g;
  }
#for j in 0..HS
  state[sb + ${j}u * HS] = s${j};
#endfor
}
