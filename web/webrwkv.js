// webrwkv for embedding: RWKV in a Web Worker on WebGPU, behind a small async API.
//   const engine = await createEngine({ model: URL, onProgress });   // quant: "int8" | "nf4" to quantize on load
//   for await (const { token, text } of engine.generate("Hello", { maxTokens: 50 })) ...
//   engine.chat.completions.create({ messages, stream: true })  // OpenAI-shaped
export class WebRwkvError extends Error {
  constructor(kind, message) { super(message); this.name = "WebRwkvError"; this.kind = kind; }
}

const HOWTO = "Use Chrome or Edge 113+ (Windows, macOS, ChromeOS, Android), Safari 26, or Firefox 141+ on Windows. " +
  "On Linux, or where WebGPU is switched off, enable chrome://flags/#enable-unsafe-webgpu (and chrome://flags/#enable-vulkan) " +
  "and restart the browser. The page must come from https:// or localhost.";

// Is WebGPU usable here? Resolves {ok, message}; never throws.
export async function webgpuSupport() {
  if (typeof navigator === "undefined" || !navigator.gpu) {
    return { ok: false, message: `This browser does not expose WebGPU. ${HOWTO}` };
  }
  try {
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) return { ok: false, message: `WebGPU is present but offers no GPU adapter (it may be disabled or blocklisted for this GPU). ${HOWTO}` };
  } catch (e) {
    return { ok: false, message: `WebGPU failed to start (${e.message}). ${HOWTO}` };
  }
  return { ok: true, message: "" };
}

class Worker_ {
  constructor(url) {
    this.w = new Worker(url, { type: "module", name: "webrwkv" });
    this.nextId = 1;
    this.pending = new Map();
    this.listeners = new Set();
    this.w.onmessage = (ev) => this._on(ev.data);
    this.w.onerror = (ev) => this._fail(new WebRwkvError("engine", `The engine worker failed: ${ev.message || "unknown error"}`));
  }
  _on(msg) {
    if (msg.type === "lost") { for (const f of this.listeners) f(msg); return; }
    const p = this.pending.get(msg.id);
    if (!p) return;
    if (msg.type === "progress") p.onProgress?.(msg);
    else if (msg.type === "token") p.onToken?.(msg);
    else {
      this.pending.delete(msg.id);
      if (msg.type === "done") p.resolve(msg.result);
      else p.reject(new WebRwkvError(msg.error.kind, msg.error.message));
    }
  }
  _fail(err) { for (const p of this.pending.values()) p.reject(err); this.pending.clear(); }
  call(type, args = {}, hooks = {}) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, ...hooks });
      this.w.postMessage({ id, type, ...args });
    });
  }
  send(type) { this.w.postMessage({ id: 0, type }); }
  terminate() { this._fail(new WebRwkvError("disposed", "The engine was disposed.")); this.w.terminate(); }
}

// An async iterator over tokens pushed by the worker.
function tokenStream(start) {
  const queue = [];
  let wake = null, finished = false, error = null, result = null;
  const push = (item) => { queue.push(item); wake?.(); };
  start(push).then((r) => { result = r; finished = true; wake?.(); }, (e) => { error = e; finished = true; wake?.(); });
  const it = {
    async next() {
      for (;;) {
        if (queue.length) return { value: queue.shift(), done: false };
        if (error) throw error;
        if (finished) return { value: result, done: true };
        await new Promise((r) => (wake = r));
        wake = null;
      }
    },
    [Symbol.asyncIterator]() { return it; },
  };
  return it;
}

export async function createEngine({ model, vocab, onProgress, workerUrl, cache = true, quant } = {}) {
  const support = await webgpuSupport();
  if (!support.ok) throw new WebRwkvError("nowebgpu", support.message);
  const w = new Worker_(workerUrl || new URL("./worker.js", import.meta.url));
  const engine = new Engine(w);
  try {
    engine.adapter = (await w.call("init", {}, { onProgress })).adapter;
    if (model) await engine.load(model, { vocab, onProgress, cache, quant });
  } catch (e) {
    w.terminate();
    throw e;
  }
  return engine;
}

class Engine {
  constructor(w) {
    this._w = w;
    this.adapter = "";
    this.model = null;
    this._stats = {};
    this._busy = null;
    this.chat = { completions: { create: (req) => this._chatCreate(req) } };
  }
  get stats() { return { adapter: this.adapter, ...this._stats }; }
  onDeviceLost(f) { this._w.listeners.add(f); }

  // tuning: kernel knobs, e.g. {gemv_rows: 4}; quant: "none" (fp16), "int8" or "nf4" weights, quantized on the GPU
  async load(url, { vocab, onProgress, cache = true, tuning, quant = "none" } = {}) {
    this.model = null;
    this.model = await this._w.call("load", { url: String(url), vocab, useCache: cache, tuning, quant }, { onProgress });
    this._stats.load = this.model.load;
    return this.model;
  }

  generate(prompt, opts = {}) {
    const options = {
      max_tokens: opts.maxTokens ?? 128, temperature: opts.temperature ?? 1.0, top_p: opts.topP ?? 0.85,
      top_k: opts.topK ?? 0, presence_penalty: opts.presencePenalty ?? 0, frequency_penalty: opts.frequencyPenalty ?? 0,
      stop: opts.stop ?? [], seed: opts.seed ?? null, chat: !!opts.chat,
      ignore_eos: !!opts.ignoreEos,
    };
    return tokenStream(async (push) => {
      const p = Array.isArray(prompt) ? prompt.map(Number) : String(prompt); // text, or token ids
      const stats = await this._w.call("generate", { prompt: p, options }, { onToken: (m) => push({ token: m.token, text: m.text }) });
      Object.assign(this._stats, stats);
      return stats;
    });
  }

  stop() { this._w.send("stop"); }
  reset() { return this._w.call("reset"); }
  saveState(name = "default") { return this._w.call("save", { name }); }
  restoreState(name = "default") { return this._w.call("restore", { name }); }
  // A state file (.st or .pth holding blocks.N.att.time_state) to start from after every reset; null: the model's own.
  loadState(url) { return this._w.call("loadState", { url: url == null ? null : String(url) }); }
  async refreshStats() { Object.assign(this._stats, await this._w.call("stats")); return this.stats; }
  unload() { this.model = null; return this._w.call("unload"); }
  cachedModels() { return this._w.call("cached"); }
  clearCache() { return this._w.call("clearCache"); }
  dispose() { this._w.terminate(); }
  _loseDevice() { return this._w.call("loseDevice"); } // tests: act out a GPU reset

  // The model's chat format (turn names, stop strings) lives in Python: the worker's "chat" message runs
  // the same ChatSession as the CLI, which reuses the state when `messages` extends the last conversation.
  countTokens(text) { return this._w.call("countTokens", { text: String(text) }); }

  async _chatCreate({ messages, stream = false, temperature = 1.0, top_p = 0.3, max_tokens = 256, stop, seed,
    presence_penalty = 0, frequency_penalty = 0 }) {
    const options = { max_tokens, temperature, top_p, presence_penalty, frequency_penalty, seed: seed ?? null,
      stop: stop == null ? [] : (Array.isArray(stop) ? stop : [stop]) };
    const it = tokenStream(async (push) => {
      const stats = await this._w.call("chat", { messages, options }, { onToken: (m) => push({ token: m.token, text: m.text }) });
      Object.assign(this._stats, stats);
      return stats;
    });
    const id = "chatcmpl-" + Math.random().toString(36).slice(2, 12);
    const created = Math.floor(Date.now() / 1000);
    const model = this.model?.name || "rwkv";
    const chunk = (delta, finish) => ({ id, object: "chat.completion.chunk", created, model,
      choices: [{ index: 0, delta, finish_reason: finish }] });
    if (stream) {
      return (async function* () {
        yield chunk({ role: "assistant", content: "" }, null);
        let r;
        while (!(r = await it.next()).done) yield chunk({ content: r.value.text }, null);
        yield chunk({}, r.value?.finish_reason || "stop");
      })();
    }
    let text = "", r;
    while (!(r = await it.next()).done) text += r.value.text;
    const st = r.value || {};
    return { id, object: "chat.completion", created, model,
      choices: [{ index: 0, message: { role: "assistant", content: text.trim() }, finish_reason: st.finish_reason || "stop" }],
      usage: { prompt_tokens: st.prompt_tokens || 0, completion_tokens: st.completion_tokens || 0,
        total_tokens: (st.prompt_tokens || 0) + (st.completion_tokens || 0) } };
  }
}
