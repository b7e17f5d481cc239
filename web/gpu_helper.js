// The JS half of the browser GPU backend: Python calls these with O(1) calls per
// step (one call encodes a whole prebuilt op list) and for zero-copy uploads.

// Pack a prebuilt op list once: arrays of pipelines and bind groups plus a flat
// Uint32Array of workgroup counts (x, y, z per op).
export function registerOps(pipelines, bindGroups, workgroups) {
  const n = pipelines.length;
  if (bindGroups.length !== n || workgroups.length !== 3 * n) {
    throw new Error(`registerOps: ${n} pipelines, ${bindGroups.length} bind groups, ${workgroups.length / 3} sizes`);
  }
  return { pipelines: Array.from(pipelines), bindGroups: Array.from(bindGroups), wg: Uint32Array.from(workgroups), n };
}

// Record a packed op list into an open compute pass.
function record(pass, prog) {
  const { pipelines, bindGroups, wg, n } = prog;
  let last = null;
  for (let i = 0; i < n; i++) {
    const p = pipelines[i];
    if (p !== last) { pass.setPipeline(p); last = p; }
    pass.setBindGroup(0, bindGroups[i]);
    pass.dispatchWorkgroups(wg[3 * i], wg[3 * i + 1], wg[3 * i + 2]);
  }
}

// Record op lists into one compute pass and submit it: the whole step in one call.
function submit(device, progs, times) {
  const enc = device.createCommandEncoder();
  const pass = enc.beginComputePass();
  for (let k = 0; k < times; k++) for (const prog of progs) record(pass, prog);
  pass.end();
  device.queue.submit([enc.finish()]);
}

export function runOps(device, prog) {
  submit(device, [prog], 1);
}

// A window of decode steps in one call: a step (a list of packed op lists) n times in a row, `per` steps in
// each compute pass and submit (each submit has a fixed cost on the GPU's side); per 1 submits each op list
// on its own.
export function runSteps(device, progs, n, per = 1) {
  if (per <= 1) {
    for (let k = 0; k < n; k++) for (const prog of progs) submit(device, [prog], 1);
    return;
  }
  for (let k = 0; k < n; k += per) submit(device, progs, Math.min(per, n - k));
}

// Copy from a Python buffer (numpy array, bytes) into a GPU buffer without an
// intermediate copy: the typed array views Pyodide's own memory.
export function writeFromPy(device, buffer, offset, pyBuf) {
  const pb = pyBuf.getBuffer("u8");
  try {
    const d = pb.data;
    device.queue.writeBuffer(buffer, offset, d.buffer, d.byteOffset, d.byteLength);
  } finally {
    pb.release();
  }
}

export function copyBuffer(device, src, srcOffset, dst, dstOffset, nbytes) {
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(src, srcOffset, dst, dstOffset, nbytes);
  device.queue.submit([enc.finish()]);
}

// Read back nbytes of a GPU buffer into a fresh Uint8Array (staging buffers are pooled).
const pools = new WeakMap();
export async function readBuffer(device, buffer, offset, nbytes) {
  const size = Math.max(4, Math.ceil(nbytes / 4) * 4);
  let pool = pools.get(device);
  if (!pool) { pool = []; pools.set(device, pool); }
  let i = pool.findIndex((b) => b.size === size);
  const staging = i >= 0 ? pool.splice(i, 1)[0]
    : device.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, label: "readback" });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(buffer, offset, staging, 0, size);
  device.queue.submit([enc.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const out = new Uint8Array(staging.getMappedRange(0, size).slice(0, nbytes));
  staging.unmap();
  if (pool.length < 8) pool.push(staging); else staging.destroy();
  return out;
}

// createComputePipelineAsync, with the time its pipeline was ready stamped on the page's clock when its promise
// settles (Python's event loop may get to it much later while the page's thread copies arriving weights).
let compiledAt = 0;
export function compileAsync(device, desc) {
  return device.createComputePipelineAsync(desc).then((p) => { compiledAt = Math.max(compiledAt, performance.now()); return p; });
}

// performance.now() (ms), and when the last compileAsync was ready (0: none yet).
export function clock() {
  return [performance.now(), compiledAt];
}

// Resolve once every submitted command has finished (used to time steps and loads).
export function onDone(device) {
  return device.queue.onSubmittedWorkDone();
}

export function u32(values) {
  return Uint32Array.from(values);
}
