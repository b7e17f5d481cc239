// The chat page: model picker and loading, a streamed transcript, sampling controls and speed stats.
// Everything heavy runs in the worker behind web/webrwkv.js; this thread only updates the page.
import { createEngine, webgpuSupport } from "./webrwkv.js";

const $ = (id) => document.getElementById(id);
const KNOWN = [
  { name: "RWKV-5 World 0.4B (fp16, 0.9 GB)", url: "https://huggingface.co/cgisky/AI00_RWKV_V5/resolve/main/RWKV-5-World-0.4B-v2-20231113-ctx4096.st" },
  { name: "RWKV-4 World 0.4B (fp16, 0.9 GB)", url: "https://huggingface.co/cgisky/RWKV-safetensors-fp16/resolve/main/RWKV-4-World-0.4B-v1-20230529-ctx4096.st" },
];
const CHAT_STOP = ["\n\n", "\nUser:"];

const app = { engine: null, loading: null, generating: false, turns: [], model: null, noGpu: false };
window.webrwkvApp = app; // for tests and the console

const mb = (n) => (n / 1e6).toFixed(n < 1e7 ? 2 : 1);
const fmtBytes = (n) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${mb(n)} MB`);

function notice(text, kind = "error") {
  const el = $("status");
  el.className = `notice ${kind}`;
  el.textContent = "";
  const close = document.createElement("button");
  close.className = "close";
  close.textContent = "×";
  close.title = "Dismiss";
  close.onclick = () => (el.hidden = true);
  const msg = document.createElement("span");
  msg.className = "notice-text";
  msg.textContent = text;
  el.append(close, msg);
  el.hidden = false;
}
const clearNotice = () => ($("status").hidden = true);

function setProgress(p) {
  const box = $("progress");
  box.hidden = false;
  const known = p.phase === "weights" && p.total > 0;
  box.classList.toggle("indeterminate", !known);
  $("progress-fill").style.width = known ? `${(100 * p.loaded / p.total).toFixed(1)}%` : "";
  if (known) {
    const src = p.fromCache ? " · from cache" : "";
    $("progress-text").textContent = `${mb(p.loaded)} / ${mb(p.total)} MB · ${p.mbps.toFixed(1)} MB/s${src}`;
  } else if (p.text) {
    $("progress-text").textContent = p.text;
  }
}

function updateControls() {
  const ready = !!app.model && !app.loading;
  $("send").disabled = !ready || app.generating;
  $("send").hidden = app.generating;
  $("stop").hidden = !app.generating;
  $("regenerate").disabled = !ready || app.generating || !app.turns.length;
  $("new-chat").disabled = app.generating;
  $("load").disabled = !!app.loading || app.noGpu;
  $("cancel-load").hidden = !app.loading;
}

function sampling() {
  return {
    temperature: Number($("temperature").value), topP: Number($("top-p").value),
    presencePenalty: Number($("presence").value), frequencyPenalty: Number($("frequency").value),
    maxTokens: Number($("max-tokens").value), stop: CHAT_STOP, chat: true,
  };
}

function showStats(s = {}) {
  const tps = (v) => (v ? `${v.toFixed(1)} tok/s` : "–");
  $("stat-prefill").textContent = tps(s.prefill_tps);
  $("stat-decode").textContent = tps(s.decode_tps);
  $("stat-py").textContent = s.py_share != null ? `${(100 * s.py_share).toFixed(s.py_share < 0.1 ? 1 : 0)}% (${(1000 * s.py_step_s).toFixed(1)} ms/step)` : "–";
  $("stat-adapter").textContent = app.engine?.adapter || "–";
}

async function refreshCache() {
  if (!app.engine) { $("cache-info").textContent = "Cache: –"; return; }
  const list = await app.engine.cachedModels();
  const total = list.reduce((t, m) => t + (m.size || 0), 0);
  $("cache-info").textContent = list.length ? `Cached: ${list.length} model${list.length > 1 ? "s" : ""}, ${fmtBytes(total)}` : "Cache: empty";
}

async function ensureEngine() {
  if (app.engine) return app.engine;
  const engine = await createEngine({ onProgress: setProgress });
  engine.onDeviceLost((m) => {
    app.model = null;
    app.generating = false;
    notice(`The GPU device was lost (${m.message}). Load the model again to continue.`);
    updateControls();
  });
  app.engine = engine;
  $("adapter").textContent = `GPU: ${engine.adapter}`;
  $("adapter").classList.add("ok");
  $("adapter").title = engine.adapter;
  showStats();
  return engine;
}

async function loadModel() {
  const url = $("model-url").value.trim() || $("model-pick").value;
  if (!url) { notice("Pick a model or paste a URL first."); return; }
  clearNotice();
  app.model = null;
  app.loading = url;
  updateControls();
  setProgress({ phase: "runtime", text: "Starting…" });
  $("model-info").textContent = "";
  try {
    const engine = await ensureEngine();
    const info = await engine.load(url, { onProgress: setProgress, quant: $("quant").value });
    app.model = info;
    const l = info.load;
    $("progress-fill").style.width = "100%";
    $("progress").classList.remove("indeterminate");
    $("progress-text").textContent = `${fmtBytes(l.total)} in ${l.seconds.toFixed(1)} s` +
      (l.fetched ? ` · ${(l.fetched / 1e6 / Math.max(l.seconds, 1e-3)).toFixed(1)} MB/s` : " · from cache");
    $("model-info").textContent = `${info.name} · RWKV ${info.version} · ${info.n_layer} layers × ${info.n_embd} · vocab ${info.vocab}` +
      (info.quant && info.quant !== "none" ? ` · ${info.quant} weights` : "");
    newChat(false);
  } catch (e) {
    $("progress").hidden = true;
    if (e.kind !== "aborted") notice(e.message || String(e));
    if (e.kind === "nowebgpu" || e.kind === "setup" || e.kind === "engine" && !app.engine?.adapter) {
      app.engine?.dispose();
      app.engine = null;
    }
  } finally {
    app.loading = null;
    updateControls();
    refreshCache().catch(() => {});
  }
}

function addMessage(role, text) {
  $("empty")?.remove();
  const row = document.createElement("div");
  row.className = `msg ${role}`;
  const av = document.createElement("div");
  av.className = "avatar";
  av.textContent = role === "user" ? "You" : "AI";
  const col = document.createElement("div");
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  bubble.textContent = text;
  const meta = document.createElement("div");
  meta.className = "meta";
  col.append(bubble, meta);
  row.append(av, col);
  $("transcript").append(row);
  $("transcript").scrollTop = $("transcript").scrollHeight;
  return { row, bubble, meta };
}

async function reply(userText, view) {
  app.generating = true;
  updateControls();
  view.bubble.classList.add("streaming");
  let text = "";
  try {
    const it = app.engine.generate(`User: ${userText}\n\nAssistant:`, sampling());
    let r;
    while (!(r = await it.next()).done) {
      text += r.value.text;
      view.bubble.textContent = text.replace(/^ /, "");
      const t = $("transcript");
      if (t.scrollHeight - t.scrollTop - t.clientHeight < 120) t.scrollTop = t.scrollHeight;
    }
    const s = app.engine.stats;
    showStats(s);
    const why = { stop: "", eos: "", max_tokens: " · max tokens", stopped: " · stopped" }[s.stop_reason] ?? "";
    view.meta.textContent = `${s.completion_tokens ?? ""} tokens · ${s.decode_tps ? s.decode_tps.toFixed(1) : "–"} tok/s${why}`;
  } catch (e) {
    notice(e.message || String(e));
    view.meta.textContent = "failed";
  } finally {
    view.bubble.classList.remove("streaming");
    if (!text.trim()) view.bubble.textContent = text.trim() ? text : "(no reply)";
    app.generating = false;
    updateControls();
  }
}

async function send(ev) {
  ev?.preventDefault();
  const msg = $("input").value.trim();
  if (!msg || !app.model || app.generating) return;
  $("input").value = "";
  autoGrow();
  clearNotice();
  try {
    await app.engine.saveState("turn"); // Regenerate comes back here
  } catch (e) {
    notice(e.message || String(e));
    return;
  }
  addMessage("user", msg);
  const view = addMessage("bot", "");
  app.turns.push({ user: msg, view });
  await reply(msg, view);
}

async function regenerate() {
  const last = app.turns.at(-1);
  if (!last || app.generating) return;
  clearNotice();
  try {
    await app.engine.restoreState("turn");
  } catch (e) {
    notice(e.message || String(e));
    return;
  }
  last.view.bubble.textContent = "";
  last.view.meta.textContent = "";
  await reply(last.user, last.view);
}

function newChat(resetEngine = true) {
  app.turns = [];
  const t = $("transcript");
  t.textContent = "";
  const empty = document.createElement("div");
  empty.id = "empty";
  empty.className = "empty";
  const title = document.createElement("h2");
  const line = document.createElement("p");
  title.textContent = app.model ? "Ready" : "Chat with RWKV, right here";
  line.textContent = app.model ? `${app.model.name} is loaded. Say hello.` : "Load a model to begin.";
  empty.append(title, line); // text, never markup: the model name comes from a URL
  t.append(empty);
  if (resetEngine && app.engine && app.model) app.engine.reset().catch((e) => notice(e.message));
  updateControls();
}

function autoGrow() {
  const ta = $("input");
  ta.style.height = "auto";
  ta.style.height = `${Math.min(ta.scrollHeight, innerHeight * 0.3)}px`;
}

async function fillModels() {
  const pick = $("model-pick");
  const add = (label, value, group) => { const o = new Option(label, value); (group || pick).append(o); };
  try {
    const r = await fetch("models/index.json", { cache: "no-cache" });
    const list = r.ok ? (await r.json()).models || [] : [];
    if (list.length) {
      const g = document.createElement("optgroup");
      g.label = "Bundled with this server";
      pick.append(g);
      for (const m of list) add(`${m.name} (${fmtBytes(m.size)})`, new URL(m.url, location.href).href, g);
    }
  } catch {}
  const g = document.createElement("optgroup");
  g.label = "Public models (Hugging Face)";
  pick.append(g);
  for (const m of KNOWN) add(m.name, m.url, g);
}

function bindSliders() {
  for (const id of ["temperature", "top-p", "presence", "frequency", "max-tokens"]) {
    const input = $(id), out = $(`${id}-out`);
    const show = () => (out.textContent = input.value);
    input.addEventListener("input", show);
    show();
  }
}

async function init() {
  bindSliders();
  const support = await webgpuSupport();
  if (!support.ok) {
    $("nowebgpu").hidden = false;
    $("nowebgpu-text").textContent = support.message;
    app.noGpu = true;
  }
  $("load").onclick = loadModel;
  $("cancel-load").onclick = () => app.engine?.unload();
  $("composer").onsubmit = send;
  $("stop").onclick = () => app.engine?.stop();
  $("regenerate").onclick = regenerate;
  $("new-chat").onclick = () => newChat(true);
  $("clear-cache").onclick = async () => {
    const engine = app.engine || (support.ok ? await ensureEngine().catch(() => null) : null);
    if (!engine) { caches?.delete("webrwkv-models-v1"); $("cache-info").textContent = "Cache: empty"; return; }
    await engine.clearCache();
    await refreshCache();
  };
  $("input").addEventListener("input", autoGrow);
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) send(e);
  });
  $("settings-toggle").onclick = () => {
    const open = $("side").classList.toggle("open");
    $("settings-toggle").setAttribute("aria-expanded", String(open));
  };
  $("model-pick").onchange = () => ($("model-url").value = "");
  updateControls();
  fillModels().then(() => {
    const q = new URLSearchParams(location.search).get("model");
    if (q) { $("model-url").value = q; if (support.ok) loadModel(); }
  });
}

init();
