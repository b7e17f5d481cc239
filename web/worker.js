// Web Worker: boots the vendored Pyodide (same origin, no CDN), installs the
// webrwkv wheel with micropip, and serves the engine protocol to the page:
//   {id, type: "init" | "load" | "loadState" | "generate" | "chat" | "count" | "stop" | "cancelLoad" | "reset" | "save" | "restore" |
//             "unload" | "stats" | "cached" | "clearCache"}
// Replies: {id, type: "progress" | "token" | "done" | "error", ...}. Its files (vendor/, wheels/) are found
// next to this script, or under the `base` URL that "init" gives (the page may be on another origin).
import * as gpuHelper from "./gpu_helper.js";
import { checkMirrors, fetchHeader, fetchIndex, isZip, prefetch, streamWrites, identity, listCached, clearCache, LoadError } from "./loader.js";

let base = new URL("./", import.meta.url);
let py = null;        // the Pyodide instance
let entry = null;     // the webrwkv.browser_entry module (a PyProxy)
let booting = null;
let loadAbort = null;
let loaded = false;   // whether Python holds a loaded model (a failed load may keep the previous one)

const post = (msg) => self.postMessage(msg);
const heapBytes = () => py?._module?.HEAPU8?.length ?? 0;

async function boot(id) {
  const progress = (text) => post({ id, type: "progress", phase: "runtime", text });
  if (!self.navigator.gpu) {
    throw new LoadError("nowebgpu", "This browser has no WebGPU in workers. Use Chrome or Edge 113+, Safari 26 or Firefox 141+ (Windows).");
  }
  progress("Starting Python (Pyodide)…");
  const { loadPyodide } = await import(new URL("vendor/pyodide/pyodide.mjs", base).href);
  py = await loadPyodide({ indexURL: new URL("vendor/pyodide/", base).href, fullStdLib: false });
  progress("Loading numpy and micropip…");
  await py.loadPackage(["numpy", "micropip"], { messageCallback: () => {}, errorCallback: (m) => console.warn(m) });
  try {
    py.runPython("import numpy, micropip");
  } catch (e) {
    throw new LoadError("setup", `numpy/micropip did not load from ${new URL("vendor/pyodide/", base).pathname} (${e.message.split("\n").pop()}). Run the project's setup to vendor Pyodide.`);
  }
  progress("Installing webrwkv…");
  const wheel = await findWheel();
  const micropip = py.pyimport("micropip");
  await micropip.install(wheel, { deps: false });
  micropip.destroy();
  py.registerJsModule("webrwkv_js", { ...gpuHelper });
  entry = py.pyimport("webrwkv.browser_entry");
  progress("Opening the GPU…");
  const info = await entry.open_device();
  const out = info.toJs({ dict_converter: Object.fromEntries });
  info.destroy();
  await watchDevice();
  return out;
}

// (Re)open the GPU device if it was lost, and tell the page when it is lost.
let watched = null;
async function watchDevice() {
  (await entry.open_device()).destroy();
  const dev = entry.js_device();
  if (dev && dev !== watched) {
    watched = dev;
    dev.lost.then((info) => post({ type: "lost", message: info.message || info.reason || "the GPU was reset" }));
  }
}

async function findWheel() {
  let listing;
  const index = new URL("wheels/index.json", base);
  try {
    const r = await fetch(index, { cache: "no-cache" });
    listing = await r.json();
  } catch (e) {
    throw new LoadError("setup", `Could not list the webrwkv wheel at /wheels/index.json (${e.message}). Serve the page with \`webrwkv serve\` after building the wheel.`);
  }
  const wheels = (listing.wheels || []).filter((w) => /^webrwkv-.*\.whl$/.test(w.name)).sort((a, b) => a.name < b.name ? 1 : -1);
  if (!wheels.length) throw new LoadError("setup", "No webrwkv wheel under /wheels/. Build it (the project's setup does) and reload.");
  return new URL(wheels[0].url, index).href; // "/wheels/x.whl" from `webrwkv serve`, "x.whl" in a bundle
}

// For a .pth: which file ranges Python still needs to read the checkpoint's index (webrwkv.browser_index).
let indexModule = null;
function indexNeeds(url) {
  const mod = (indexModule ??= py.pyimport("webrwkv.browser_index"));
  const name = new URL(url).pathname.split("/").pop() || url;
  return (blob, size) => {
    const r = mod.index_needs(blob, size, name);
    const out = r.toJs();
    r.destroy();
    return out;
  };
}

// A file next to the model: <stem>.vocab.txt (its vocabulary), <stem>.card.json (its model card).
async function besideModel(url, suffix, override) {
  const guess = override || url.replace(/\.(safetensors|st|pth)(\?.*)?$/, `${suffix}$2`);
  if (guess === url) return null;
  try {
    const r = await fetch(guess, { cache: "no-cache" });
    if (!r.ok) return null;
    const text = await r.text();
    return text.startsWith("version https://git-lfs") || text.trimStart().startsWith("<") ? null : text;
  } catch { return null; }
}

// The model card, checked by Python (webrwkv.model_card); a broken card is reported, not fatal.
function readCard(text) {
  if (!text) return { card: null, cardError: "" };
  try {
    const c = entry.model_card(text);
    const card = c.toJs({ dict_converter: Object.fromEntries });
    c.destroy();
    return { card, cardError: "" };
  } catch (e) {
    return { card: null, cardError: errorOf(e).message };
  }
}

async function load(id, { url, mirrors = [], vocab, useCache = true, tuning, quant }) {
  loadAbort?.abort();
  const ctrl = new AbortController();
  loadAbort = ctrl;
  const t0 = performance.now();
  const heap0 = heapBytes();
  entry.trace_memory(true); // Python's own allocations during the load (weights must not be among them)
  let result, pyPeak;
  try {
    result = await loadSteps(id, new URL(url, base).href, mirrors, vocab, useCache, ctrl, tuning, quant);
  } finally {
    pyPeak = entry.trace_memory(false);
    if (loadAbort === ctrl) loadAbort = null;
  }
  const heap = heapBytes();
  // seconds: the whole load; streamSeconds: the weights' download (or cache read) alone; phases: where it went
  result.load = { ...result.load, streamSeconds: result.load.seconds, seconds: (performance.now() - t0) / 1000,
    heapGrowth: heap - heap0, heapBytes: heap, pyPeak };
  return result;
}

async function loadSteps(id, url, mirrors, vocab, useCache, ctrl, tuning, quant) {
  let t = performance.now();
  const phases = {};
  const lap = (name) => { const now = performance.now(); phases[name] = (now - t) / 1000; t = now; };
  await watchDevice();
  const progress = (p) => post({ id, type: "progress", ...p });
  progress({ phase: "header", text: "Reading the model header…" });
  let { prefix, size, etag } = await fetchHeader(url, ctrl.signal);
  const mirrored = checkMirrors(url, mirrors, prefix.subarray(0, 1 << 16), size, ctrl.signal); // each starts as the file does
  mirrored.catch(() => {}); // awaited below
  if (isZip(prefix)) ({ prefix, size, etag } = await fetchIndex(url, { prefix, size, etag }, indexNeeds(url), ctrl.signal));
  const [vocabText, cardText] = await Promise.all([besideModel(url, ".vocab.txt", vocab), besideModel(url, ".card.json"), mirrored]);
  if (ctrl.signal.aborted) throw new LoadError("aborted", "Loading was cancelled.");
  lap("header");
  progress({ phase: "plan", text: "Planning GPU buffers…" });
  // the stream's first blocks download while the load is planned (a header the engine cannot read: none,
  // and plan_load says why)
  let early = null;
  try {
    const grid = entry.stream_grid(prefix, size, url);
    const [fileSize, dataStart] = grid.toJs();
    grid.destroy();
    early = await prefetch({ url, mirrors, size: fileSize, ident: await identity(fileSize, etag, prefix), dataStart, signal: ctrl.signal, useCache });
  } catch {}
  try {
    // From here on the previous model is gone: plan_load frees it before making the new buffers.
    loaded = false;
    // quant "int8" / "nf4": the layers' matrices are quantized on the GPU as their bytes arrive
    // the kernels compile (all at once) while the weights stream in
    const kernels = (done, total) => progress({ phase: "kernels", done, total, text: `Preparing the GPU kernels (${done}/${total})…` });
    const planPy = entry.plan_load(prefix, size, url, vocabText, tuning ? py.toPy(tuning) : null, quant || "none", kernels);
    const plan = planPy.toJs({ dict_converter: Object.fromEntries, create_pyproxies: false });
    planPy.destroy();
    const ident = await identity(plan.size, etag, prefix);
    lap("plan");
    const stream = await streamWrites({
      url, mirrors, device: plan.device, size: plan.size, ident, dataStart: plan.dataStart, writes: plan.writes,
      onProgress: progress, onWriteDone: (tag, buf) => entry.write_done(tag, buf), signal: ctrl.signal, useCache, early,
    });
    lap("stream");
    progress({ phase: "finish", text: "Preparing the GPU kernels…" });
    const infoPy = await entry.finish_load(cardText);
    const info = infoPy.toJs({ dict_converter: Object.fromEntries });
    infoPy.destroy();
    if (ctrl.signal.aborted) { // cancelled while the kernels were prepared: the page must not see a model
      entry.unload();
      throw new LoadError("aborted", "Loading was cancelled.");
    }
    loaded = true;
    lap("finish");
    return { ...info, ...readCard(cardText), url, load: { ...stream, phases } };
  } finally {
    early?.close(); // a load that ended before its stream took the early downloads
  }
}

// A state file (.st / .pth with blocks.N.att.time_state; small, so fetched whole) the model starts from; null: its own.
async function loadState(url) {
  let bytes = null, name = "";
  if (url != null) {
    const href = new URL(url, base).href;
    name = new URL(href).pathname.split("/").pop() || href;
    let r;
    try {
      r = await fetch(href);
    } catch (e) {
      throw new LoadError("network", `Could not fetch the state file ${href} (${e.message}).`);
    }
    if (!r.ok) throw new LoadError("network", `The state file ${href} answered HTTP ${r.status}.`);
    bytes = new Uint8Array(await r.arrayBuffer());
  }
  const out = entry.load_state(bytes, name);
  const res = out.toJs({ dict_converter: Object.fromEntries });
  out.destroy();
  return res;
}

async function generate(id, { prompt, options }) {
  const emit = (token, text) => post({ id, type: "token", token, text });
  const statsPy = await entry.generate(typeof prompt === "string" ? prompt : py.toPy(prompt), py.toPy(options || {}), emit);
  const stats = statsPy.toJs({ dict_converter: Object.fromEntries });
  statsPy.destroy();
  return stats;
}

// An OpenAI-style conversation, answered by Python's ChatSession with the model's chat format.
async function chat(id, { messages, options }) {
  const emit = (token, text) => post({ id, type: "token", token, text });
  const statsPy = await entry.chat(py.toPy(messages), py.toPy(options || {}), emit);
  const stats = statsPy.toJs({ dict_converter: Object.fromEntries });
  statsPy.destroy();
  return stats;
}

const handlers = {
  init: (id, msg) => {
    if (msg.base && !booting) base = new URL(msg.base);
    return (booting ??= boot(id));
  },
  load: (id, msg) => load(id, msg),
  generate: (id, msg) => generate(id, msg),
  chat: (id, msg) => chat(id, msg),
  loadState: (id, { url }) => loadState(url),
  reset: () => entry.reset(),
  save: (id, { name }) => entry.save_state(name),
  restore: (id, { name }) => entry.restore_state(name),
  count: (id, { text }) => entry.count_tokens(typeof text === "string" ? text : py.toPy(text)),
  unload: () => { loadAbort?.abort(); entry?.unload(); loaded = false; },
  loseDevice: () => entry.lose_device(),
  kernelTimes: (id, m) => entry.kernel_times(m.batch ?? 1, m.steps ?? 200, m.prefill ?? 0),
  stats: () => ({ ...(entry ? entry.stats().toJs({ dict_converter: Object.fromEntries }) : {}), heapBytes: heapBytes() }),
  cached: () => listCached(),
  clearCache: () => clearCache(),
};

function errorOf(e) {
  if (e instanceof LoadError) return { kind: e.kind, message: e.message };
  const text = String(e?.message || e);
  // A Python exception arrives as a PythonError whose last line is "Type: message".
  const m = text.trim().split("\n").pop().match(/^(?:webrwkv\.errors\.)?(\w+Error): (.*)$/s);
  if (e?.type || m) {
    const kind = { ModelFormatError: "badfile", SourceError: "network", DeviceLostError: "devicelost", GpuError: "gpu", TokenizerError: "badfile" }[e?.type || m?.[1]] || "engine";
    return { kind, message: m ? m[2] : text };
  }
  return { kind: "engine", message: text };
}

let chain = Promise.resolve();
self.onmessage = (ev) => {
  const msg = ev.data;
  const { id, type } = msg;
  if (type === "stop") { entry?.stop(); return; }
  if (type === "cancelLoad") { loadAbort?.abort(); return; }
  if (type === "unload") loadAbort?.abort();
  const run = async () => {
    try {
      if (type !== "init" && type !== "cached" && type !== "clearCache") await handlers.init(id, {});
      const h = handlers[type];
      if (!h) throw new Error(`unknown message ${type}`);
      const result = await h(id, msg);
      post({ id, type: "done", result: result?.toJs ? result.toJs({ dict_converter: Object.fromEntries }) : result });
    } catch (e) {
      if (type === "init") booting = null;
      post({ id, type: "error", error: { ...errorOf(e), ...(type === "load" ? { modelKept: loaded } : {}) } });
    }
  };
  chain = chain.then(run);
};
