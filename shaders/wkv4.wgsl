// v4 time mixing: per channel and segment, the (aa, bb, pp) recurrence over the segment's rows.
// y[t] = sigmoid(r) * wkv, with proj = [r, k, v] per row and w = -exp(time_decay), u = time_first.

@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> proj: array<f32>;         // [T, 3, C] (r, k, v)
@group(0) @binding(2) var<storage, read> vecs: array<f32>;
@group(0) @binding(3) var<storage, read_write> state: array<f32>;  // aa, bb, pp at AA, AA+C, AA+2C
@group(0) @binding(4) var<storage, read_write> y: array<f32>;      // [T, C]

const C: u32 = {{C}}u;

@compute @workgroup_size({{WG}})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let c = gid.x;
  let s = gid.y;
  if (c >= C || s >= info[1]) { return; }
  let seg0 = info[8u + 4u * s];
  let n = info[9u + 4u * s];
  let sb = info[10u + 4u * s] * {{SLOT}}u + {{AA}}u + c;
  let w = -exp(vecs[{{DECAY}}u + c]);
  let u = vecs[{{FIRST}}u + c];
  var aa = state[sb];
  var bb = state[sb + C];
  var pp = state[sb + 2u * C];
  for (var r = 0u; r < n; r++) {
    let t = seg0 + r;
    let rr = proj[t * {{PTS}}u + c];
    let k = proj[t * {{PTS}}u + 1u * C + c];
    let v = proj[t * {{PTS}}u + 2u * C + c];
    let ww = u + k;
    let p = max(pp, ww);
    let e1 = exp(pp - p);
    let e2 = exp(ww - p);
    y[t * C + c] = (e1 * aa + e2 * v) / (e1 * bb + e2) / (1.0 + exp(-rr));
    let w2 = w + pp;
    let q = max(w2, k);
    let f1 = exp(w2 - q);
    let f2 = exp(k - q);
    aa = f1 * aa + f2 * v;
    bb = f1 * bb + f2;
    pp = q;
  }
  state[sb] = aa;
  state[sb + C] = bb;
  state[sb + 2u * C] = pp;
}
