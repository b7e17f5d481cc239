// webrwkv for embedding: RWKV in a Web Worker on WebGPU, behind a small async API.
//   const engine = await createEngine({ model: URL, onProgress });   // quant: "int8" | "nf4" to quantize on load
//   for await (const { token, text } of engine.generate("Hello", { maxTokens: 50, signal })) ...
//   await engine.chat.completions.create({ messages, stream: true }, { signal })  // OpenAI-shaped
// The engine's files (worker.js, vendor/, wheels/) are found next to this module, or under `baseUrl`;
// they may live on another origin (served with CORS), like any script from a CDN.
import { listCached, clearCache } from "./loader.js";

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

// Models kept in this origin's Cache API, and clearing them: no engine (and no GPU) needed.
export const cachedModels = () => listCached();
export const clearModelCache = () => clearCache();

// ---- option checks: a wrong option is a clear error here, never a Python traceback later ----------
const bad = (message) => new WebRwkvError("options", message);
const show = (v) => (typeof v === "string" ? JSON.stringify(v) : String(v));
const isNum = (v) => typeof v === "number" && Number.isFinite(v);
const CHECKS = {
  int1: [(v) => Number.isInteger(v) && v >= 1, "a whole number of at least 1"],
  int0: [(v) => Number.isInteger(v) && v >= 0, "a whole number of at least 0 (0 turns it off)"],
  temp: [(v) => isNum(v) && v >= 0, "a number of at least 0 (0 is greedy)"],
  topP: [(v) => isNum(v) && v > 0 && v <= 1, "a number above 0 and at most 1 (1 turns it off)"],
  real: [(v) => isNum(v), "a finite number"],
  seed: [(v) => v == null || Number.isSafeInteger(v), "a whole number, or null for a random seed"],
  bool: [(v) => typeof v === "boolean", "true or false"],
  stop: [(v) => v == null || typeof v === "string" || (Array.isArray(v) && v.every((s) => typeof s === "string" && s)),
    "a string or an array of non-empty strings"],
};
function check(where, name, value, kind) {
  const [ok, what] = CHECKS[kind];
  if (!ok(value)) throw bad(`${where}: ${name} must be ${what}, got ${show(value)}.`);
  return value;
}
function checkSignal(where, signal) {
  if (signal != null && !(typeof signal === "object" && "aborted" in signal && typeof signal.addEventListener === "function")) {
    throw bad(`${where}: signal must be an AbortSignal (from new AbortController().signal), got ${show(signal)}.`);
  }
  return signal ?? null;
}
function unknown(where, opts, known, hint = {}) {
  for (const k of Object.keys(opts)) {
    if (known.includes(k)) continue;
    const camel = k.replace(/_([a-z])/g, (_, c) => c.toUpperCase());
    const tip = hint[k] || (known.includes(camel) ? ` (did you mean ${camel}?)` : "");
    throw bad(`${where}: unknown option ${k}${tip}. Known options: ${known.join(", ")}.`);
  }
}
const stopList = (s) => (s == null ? [] : typeof s === "string" ? [s] : [...s]);

const GEN = { maxTokens: "int1", temperature: "temp", topP: "topP", topK: "int0", presencePenalty: "real",
  frequencyPenalty: "real", seed: "seed", ignoreEos: "bool", chat: "bool", stop: "stop" };

// generate()'s options in the worker's (Python's) names, checked.
export function generateOptions(opts = {}) {
  const where = "generate";
  if (opts === null || typeof opts !== "object") throw bad(`${where}: options must be an object, got ${show(opts)}.`);
  unknown(where, opts, [...Object.keys(GEN), "signal"]);
  for (const [k, kind] of Object.entries(GEN)) if (opts[k] !== undefined) check(where, k, opts[k], kind);
  return {
    max_tokens: opts.maxTokens ?? 128, temperature: opts.temperature ?? 1.0, top_p: opts.topP ?? 0.85,
    top_k: opts.topK ?? 0, presence_penalty: opts.presencePenalty ?? 0, frequency_penalty: opts.frequencyPenalty ?? 0,
    stop: stopList(opts.stop), seed: opts.seed ?? null,
    chat: !!opts.chat, ignore_eos: !!opts.ignoreEos,
  };
}

// ---- the worker ----------------------------------------------------------------------------------
// A module worker from the engine's URL; when that URL is on another origin (which Worker refuses),
// a same-origin blob worker that imports it (the script must then be served with CORS).
function startWorker(url) {
  const same = typeof location === "undefined" || url.origin === location.origin;
  if (same) return { worker: new Worker(url, { type: "module", name: "webrwkv" }), blob: null };
  const blob = URL.createObjectURL(new Blob([`import ${JSON.stringify(url.href)};\n`], { type: "text/javascript" }));
  return { worker: new Worker(blob, { type: "module", name: "webrwkv" }), blob };
}

class Worker_ {
  constructor(url) {
    const { worker, blob } = startWorker(url);
    this.w = worker;
    this.blob = blob;
    this.url = url;
    this.nextId = 1;
    this.pending = new Map();
    this.listeners = new Set();
    this.w.onmessage = (ev) => this._on(ev.data);
    this.w.onerror = (ev) => {
      ev.preventDefault?.();
      const why = ev.message || (this.blob ? "the script could not be imported" : "unknown error");
      const cors = this.blob ? ` A script on another origin must be served with CORS (Access-Control-Allow-Origin) for ${url.href}.` : "";
      this._fail(new WebRwkvError("engine", `The engine worker failed: ${why}.${cors}`));
    };
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
      else p.reject(Object.assign(new WebRwkvError(msg.error.kind, msg.error.message), msg.error.modelKept === false ? { modelKept: false } : {}));
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
  terminate() {
    this._fail(new WebRwkvError("disposed", "The engine was disposed."));
    this.w.terminate();
    if (this.blob) URL.revokeObjectURL(this.blob);
  }
}

const abortError = (signal) => signal?.reason ?? new DOMException("The operation was aborted.", "AbortError");

// An async iterator over tokens pushed by the worker. Leaving a for-await loop early, or aborting
// `signal`, stops the generation in the worker (after the token in flight).
function tokenStream(start, stop, signal) {
  const queue = [];
  let wake = null, finished = false, error = null, result = null, closed = false;
  const ping = () => { const w = wake; wake = null; w?.(); };
  const push = (item) => { if (!closed) { queue.push(item); ping(); } };
  const onAbort = () => { if (!finished) { error = abortError(signal); finished = true; stop(); ping(); } };
  if (signal?.aborted) { error = abortError(signal); finished = true; }
  else {
    signal?.addEventListener("abort", onAbort, { once: true });
    start(push).then((r) => { if (!finished) { result = r; finished = true; } ping(); },
      (e) => { if (!finished) { error = e; finished = true; } ping(); })
      .finally(() => signal?.removeEventListener("abort", onAbort));
  }
  const it = {
    async next() {
      for (;;) {
        if (error) { queue.length = 0; closed = true; throw error; }
        if (queue.length) return { value: queue.shift(), done: false };
        if (finished) { closed = true; return { value: result, done: true }; }
        await new Promise((r) => (wake = r));
      }
    },
    async return(value) {
      if (!finished) stop();
      closed = true;
      queue.length = 0;
      return { value, done: true };
    },
    [Symbol.asyncIterator]() { return it; },
  };
  return it;
}

// ---- createEngine --------------------------------------------------------------------------------
const ENGINE_OPTS = ["model", "vocab", "onProgress", "baseUrl", "workerUrl", "cache", "quant", "signal"];
const QUANTS = ["none", "int8", "nf4"];

function resolveUrl(u, what) {
  try {
    return new URL(String(u), typeof document !== "undefined" ? document.baseURI : self.location?.href);
  } catch {
    throw bad(`${what} ${show(u)} is not a URL.`);
  }
}

export async function createEngine(opts = {}) {
  if (opts === null || typeof opts !== "object") throw bad(`createEngine: options must be an object, got ${show(opts)}.`);
  unknown("createEngine", opts, ENGINE_OPTS, { base_url: " (did you mean baseUrl?)", baseURL: " (did you mean baseUrl?)" });
  const { model, vocab, onProgress, baseUrl, workerUrl, cache = true, quant = "none" } = opts;
  const signal = checkSignal("createEngine", opts.signal);
  if (onProgress != null && typeof onProgress !== "function") throw bad("createEngine: onProgress must be a function.");
  check("createEngine", "cache", cache, "bool");
  if (!QUANTS.includes(quant)) throw bad(`createEngine: quant must be one of ${QUANTS.join(", ")}, got ${show(quant)}.`);
  let base = new URL("./", import.meta.url);
  if (baseUrl != null) {
    base = resolveUrl(baseUrl, "createEngine: baseUrl");
    if (!base.pathname.endsWith("/")) base = new URL(base.href + "/");
  }
  if (signal?.aborted) throw abortError(signal);
  const support = await webgpuSupport();
  if (!support.ok) throw new WebRwkvError("nowebgpu", support.message);
  const w = new Worker_(workerUrl ? resolveUrl(workerUrl, "createEngine: workerUrl") : new URL("worker.js", base));
  const engine = new Engine(w);
  const onAbort = () => w.terminate();
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    engine.adapter = (await w.call("init", { base: base.href }, { onProgress })).adapter;
    if (model) await engine.load(model, { vocab, onProgress, cache, quant, signal });
  } catch (e) {
    w.terminate();
    throw signal?.aborted ? abortError(signal) : e;
  } finally {
    signal?.removeEventListener("abort", onAbort);
  }
  return engine;
}

const CHAT_KNOWN = ["messages", "model", "stream", "stream_options", "temperature", "top_p", "max_tokens",
  "max_completion_tokens", "stop", "seed", "presence_penalty", "frequency_penalty", "n", "user", "signal"];

class Engine {
  constructor(w) {
    this._w = w;
    this.adapter = "";
    this.model = null;
    this._stats = {};
    this.chat = { completions: { create: (body, options) => this._chatCreate(body, options) } };
    w.listeners.add(() => { this.model = null; }); // a lost device takes the model with it
  }
  get stats() { return { adapter: this.adapter, ...this._stats }; }
  onDeviceLost(f) { this._w.listeners.add(f); }

  // tuning: kernel knobs, e.g. {gemv_rows: 4}; quant: "none" (fp16), "int8" or "nf4" weights, quantized on the GPU.
  // A load that fails before the old model's memory was given back keeps the old model loaded
  // (the error then has modelKept !== false); a cancelled load (signal) rejects with an AbortError.
  async load(url, opts = {}) {
    unknown("load", opts, ["vocab", "onProgress", "cache", "tuning", "quant", "signal", "mirrors"]);
    const { vocab, onProgress, cache = true, tuning, quant = "none", mirrors = [] } = opts;
    const signal = checkSignal("load", opts.signal);
    if (url == null || url === "") throw bad("load: give the URL of a .safetensors / .st model file.");
    if (!QUANTS.includes(quant)) throw bad(`load: quant must be one of ${QUANTS.join(", ")}, got ${show(quant)}.`);
    check("load", "cache", cache, "bool");
    const href = resolveUrl(url, "load: the model URL").href;
    const vocabHref = vocab ? resolveUrl(vocab, "load: vocab").href : undefined;
    if (!Array.isArray(mirrors) || mirrors.length > 7) throw bad(`load: mirrors must be an array of at most 7 URLs, got ${show(mirrors)}.`);
    const mirrorHrefs = mirrors.map((m) => resolveUrl(m, "load: the mirror").href);
    if (signal?.aborted) throw abortError(signal);
    const onAbort = () => this._w.send("cancelLoad");
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      this.model = await this._w.call("load", { url: href, mirrors: mirrorHrefs, vocab: vocabHref, useCache: cache, tuning, quant }, { onProgress });
    } catch (e) {
      if (e.modelKept === false || e.kind === "aborted") this.model = null;
      if (signal?.aborted) throw abortError(signal);
      throw e;
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
    this._stats.load = this.model.load;
    return this.model;
  }

  // Stream a continuation of `prompt` (text, or an array of token ids) from the current state.
  generate(prompt, opts = {}) {
    if (typeof prompt !== "string" && !(Array.isArray(prompt) && prompt.every((t) => Number.isInteger(t) && t >= 0))) {
      throw bad(`generate: the prompt must be a string or an array of token ids, got ${show(prompt)}.`);
    }
    const options = generateOptions(opts);
    const signal = checkSignal("generate", opts.signal);
    return tokenStream(async (push) => {
      const stats = await this._w.call("generate", { prompt, options }, { onToken: (m) => push({ token: m.token, text: m.text }) });
      Object.assign(this._stats, stats);
      return stats;
    }, () => this.stop(), signal);
  }

  // How many tokens `text` is for the loaded model's tokenizer; for a list of {role, content} messages,
  // how many the conversation is as the model reads it (its chat format, system text and turns).
  async countTokens(text) {
    const ok = typeof text === "string" || (Array.isArray(text) && text.every((m) => m && typeof m.content === "string"));
    if (!ok) throw bad(`countTokens: pass a string or an array of {role, content} messages, got ${show(text)}.`);
    return this._w.call("count", { text });
  }

  stop() { this._w.send("stop"); }
  reset() { return this._w.call("reset"); }
  saveState(name = "default") { return this._w.call("save", { name }); }
  restoreState(name = "default") { return this._w.call("restore", { name }); }
  // A state file (.st or .pth holding blocks.N.att.time_state) to start from after every reset; null: the model's own.
  loadState(url) {
    return this._w.call("loadState", { url: url == null ? null : resolveUrl(url, "loadState: the state URL").href });
  }
  // µs a step by kernel (webrwkv.kernel_times): a decode step of `batch` slots, or a prefill chunk; resets the state
  kernelTimes({ batch = 1, steps = 200, prefill = 0 } = {}) { return this._w.call("kernelTimes", { batch, steps, prefill }); }
  async refreshStats() { Object.assign(this._stats, await this._w.call("stats")); return this.stats; }
  unload() { this.model = null; return this._w.call("unload"); }
  cachedModels() { return listCached(); }
  clearCache() { return clearCache(); }
  dispose() { this._w.terminate(); }
  _loseDevice() { return this._w.call("loseDevice"); } // tests: act out a GPU reset

  _chatRequest(body, options) {
    const where = "chat.completions.create";
    if (body === null || typeof body !== "object") throw bad(`${where}: pass an object such as {messages: [{role: "user", content: "Hi!"}]}.`);
    unknown(where, body, CHAT_KNOWN, { maxTokens: " (did you mean max_tokens?)", topP: " (did you mean top_p?)" });
    const { messages } = body;
    if (!Array.isArray(messages) || !messages.length) throw bad(`${where}: messages must be a non-empty array of {role, content}.`);
    const msgs = messages.map((m, i) => {
      if (!m || !["system", "user", "assistant"].includes(m.role)) {
        throw bad(`${where}: messages[${i}].role must be "system", "user" or "assistant", got ${show(m?.role)}.`);
      }
      let c = m.content;
      if (Array.isArray(c) && c.every((p) => p?.type === "text" && typeof p.text === "string")) c = c.map((p) => p.text).join("");
      if (typeof c !== "string") throw bad(`${where}: messages[${i}].content must be a string (or text parts), got ${show(c)}.`);
      return { role: m.role, content: c };
    });
    if (body.n != null && body.n !== 1) throw bad(`${where}: n must be 1 (one reply per call), got ${show(body.n)}.`);
    const num = (k, kind, def) => (body[k] == null ? def : check(where, k, body[k], kind));
    const max = body.max_completion_tokens ?? body.max_tokens;
    if (max != null) check(where, body.max_completion_tokens != null ? "max_completion_tokens" : "max_tokens", max, "int1");
    if (body.stop != null) check(where, "stop", body.stop, "stop");
    if (body.stream != null) check(where, "stream", body.stream, "bool");
    const signal = checkSignal(where, options?.signal ?? body.signal);
    return {
      messages: msgs, stream: !!body.stream, signal,
      includeUsage: !!body.stream_options?.include_usage,
      gen: {
        maxTokens: max ?? 256, temperature: num("temperature", "temp", 1.0), topP: num("top_p", "topP", 1.0),
        presencePenalty: num("presence_penalty", "real", 0), frequencyPenalty: num("frequency_penalty", "real", 0),
        seed: num("seed", "seed", null), stop: stopList(body.stop),
      },
    };
  }

  // The reply's tokens for a conversation: the worker runs Python's ChatSession (the CLI's), which writes
  // the turns in the model's chat format, stops at its stop strings (and `stop`), and reuses the state
  // when `messages` extends the conversation it read last (a follow-up, or a regenerate).
  async _chatTokens(req) {
    const options = generateOptions(req.gen);
    return tokenStream(async (push) => {
      const stats = await this._w.call("chat", { messages: req.messages, options }, { onToken: (m) => push({ token: m.token, text: m.text }) });
      Object.assign(this._stats, stats);
      return stats;
    }, () => this.stop(), req.signal);
  }

  // OpenAI-shaped: {messages, stream, temperature, top_p, max_tokens, stop, seed, presence_penalty,
  // frequency_penalty}, and {signal} as the second argument (as in the OpenAI SDK) or in the body.
  async _chatCreate(body, options) {
    const req = this._chatRequest(body, options);
    if (req.signal?.aborted) throw abortError(req.signal);
    const it = await this._chatTokens(req);
    const id = "chatcmpl-" + Math.random().toString(36).slice(2, 14);
    const created = Math.floor(Date.now() / 1000);
    const model = this.model?.card?.name || this.model?.name || "rwkv";
    const usageOf = (st) => {
      const p = st?.prompt_tokens || 0, c = st?.completion_tokens || 0;
      return { prompt_tokens: p, completion_tokens: c, total_tokens: p + c };
    };
    const finishOf = (st) => (st?.finish_reason === "length" ? "length" : "stop");
    if (req.stream) {
      const includeUsage = req.includeUsage;
      const chunk = (delta, finish, usage = null) => ({ id, object: "chat.completion.chunk", created, model,
        choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }], usage });
      return (async function* () {
        yield chunk({ role: "assistant", content: "" }, null);
        // Leading and trailing white space is held back, so the stream adds up to the trimmed reply.
        let started = false, held = "", r;
        try {
          while (!(r = await it.next()).done) {
            let t = held + r.value.text;
            if (!started) t = t.trimStart();
            const body = t.trimEnd();
            held = t.slice(body.length);
            if (body) { started = true; yield chunk({ content: body }, null); }
          }
        } finally {
          if (!r?.done) await it.return();
        }
        const usage = usageOf(r.value);
        yield chunk({}, finishOf(r.value), usage);
        if (includeUsage) yield { id, object: "chat.completion.chunk", created, model, choices: [], usage };
      })();
    }
    let text = "", r;
    while (!(r = await it.next()).done) text += r.value.text;
    return { id, object: "chat.completion", created, model,
      choices: [{ index: 0, message: { role: "assistant", content: text.trim() }, logprobs: null, finish_reason: finishOf(r.value) }],
      usage: usageOf(r.value) };
  }
}
