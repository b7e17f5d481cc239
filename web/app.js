// The page: model picker and loading (with its model card), the two modes (chat, playground),
// sampling settings, speed stats and the drawers on small screens. Everything heavy runs in the
// worker behind web/webrwkv.js; chat-view.js and play-view.js hold the two modes.
import { createEngine, webgpuSupport, cachedModels, clearModelCache } from "./webrwkv.js";
import { openStore } from "./store.js";
import { initChat, restoreConversations, renderTranscript, updateChatControls, countContext } from "./chat-view.js";
import { initPlay, playModelChanged, updatePlayControls } from "./play-view.js";
import { $, notice, clearNotice, fmtBytes, fmtMB, isNarrow } from "./ui.js";

// Official checkpoints as BlinkDL publishes them (.pth, streamed as they are) and converted copies (.st)
const HF = "https://huggingface.co";
const KNOWN = [
  { name: "RWKV-7 G1 0.1B (official .pth, 0.4 GB)", url: `${HF}/BlinkDL/rwkv7-g1/resolve/main/rwkv7-g1-0.1b-20250307-ctx4096.pth` },
  { name: "RWKV-7 World 0.1B (official .pth, 0.4 GB)", url: `${HF}/BlinkDL/rwkv-7-world/resolve/main/RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth` },
  { name: "RWKV-7 World 0.4B (official .pth, 0.9 GB)", url: `${HF}/BlinkDL/rwkv-7-world/resolve/main/RWKV-x070-World-0.4B-v2.9-20250107-ctx4096.pth` },
  { name: "RWKV-5 World 0.4B (official .pth, 0.9 GB)", url: `${HF}/BlinkDL/rwkv-5-world/resolve/main/RWKV-5-World-0.4B-v2-20231113-ctx4096.pth` },
  { name: "RWKV-5 World 0.4B (converted .st, fp16, 0.9 GB)", url: `${HF}/cgisky/AI00_RWKV_V5/resolve/main/RWKV-5-World-0.4B-v2-20231113-ctx4096.st` },
  { name: "RWKV-4 World 0.4B (official .pth, 0.9 GB)", url: `${HF}/BlinkDL/rwkv-4-world/resolve/main/RWKV-4-World-0.4B-v1-20230529-ctx4096.pth` },
  { name: "RWKV-4 World 0.4B (converted .st, fp16, 0.9 GB)", url: `${HF}/cgisky/RWKV-safetensors-fp16/resolve/main/RWKV-4-World-0.4B-v1-20230529-ctx4096.st` },
];
const SLIDERS = { temperature: "temperature", "top-p": "top_p", presence: "presence_penalty", frequency: "frequency_penalty", "max-tokens": "max_tokens" };

const app = {
  engine: null, model: null, loading: null, loadAbort: null, busy: null, abort: null, noGpu: false,
  mode: "chat", store: null, conv: null, cards: new Map(), stateOwner: null, ready: false,
};
window.webrwkvApp = app; // for tests and the console

// ---- shared with the modes -----------------------------------------------------------------------
app.sampling = () => Object.fromEntries(Object.entries(SLIDERS).map(([id, k]) => [k, Number($(id).value)]));
app.setBusy = (what) => { app.busy = what; updateControls(); };
app.closeDrawers = () => setDrawer(null);
app.showStats = showStats;
app.emptyState = emptyState;

function updateControls() {
  $("load").disabled = !!app.loading || app.noGpu || !app.ready; // ready: the model list is filled
  $("cancel-load").hidden = !app.loading;
  $("new-chat").disabled = app.busy === "chat";
  updateChatControls();
  updatePlayControls();
  if (!app.model) {
    $("play-go").disabled = !!app.loading || app.noGpu || !app.ready;
    $("play-go").textContent = "Load model";
  } else $("play-go").textContent = "Generate";
}

// ---- modes and drawers ---------------------------------------------------------------------------
function setMode(mode) {
  app.mode = mode;
  $("chat-view").hidden = mode !== "chat";
  $("play-view").hidden = mode !== "play";
  $("layout").classList.toggle("play-mode", mode === "play");
  $("mode-chat").setAttribute("aria-selected", String(mode === "chat"));
  $("mode-play").setAttribute("aria-selected", String(mode === "play"));
  $("convs-toggle").hidden = mode !== "chat";
}

function setDrawer(which) {
  for (const [id, btn] of [["convs", "convs-toggle"], ["side", "settings-toggle"]]) {
    $(id).classList.toggle("open", which === id);
    $(btn).setAttribute("aria-expanded", String(which === id));
  }
  $("scrim").hidden = !which;
}
const toggleDrawer = (id) => setDrawer($(id).classList.contains("open") ? null : id);

function emptyState(mode) {
  const box = Object.assign(document.createElement("div"), { className: "empty" });
  const h = document.createElement("h2"), p = document.createElement("p");
  box.append(h, p);
  const m = app.model, card = m?.card || app.cards.get(pickedUrl());
  if (!m) {
    h.textContent = "RWKV, right here in your browser";
    p.textContent = "The model runs on your GPU through WebGPU. Nothing you write leaves this tab.";
    const go = Object.assign(document.createElement("button"), { className: "primary big", textContent: `Load ${card?.name || "the model"}` });
    go.onclick = loadModel;
    go.disabled = app.noGpu || !!app.loading || !app.ready;
    box.append(go);
  } else if (card?.kind === "completion") {
    h.textContent = `${card.name} continues text`;
    p.textContent = `It is not a chat model. ${card.prompt_format?.description || ""} For free writing, use the Playground.`;
    const go = Object.assign(document.createElement("button"), { className: "big", textContent: "Open the Playground" });
    go.onclick = () => setMode("play");
    box.append(go);
  } else {
    h.textContent = `${card?.name || m.name} is ready`;
    p.textContent = card?.description || "Say hello. Edit, regenerate or delete any message; conversations stay in this browser.";
  }
  return box;
}

// ---- progress and model info ---------------------------------------------------------------------
function setProgress(p) {
  const box = $("progress");
  box.hidden = false;
  const weights = p.phase === "weights" && p.total > 0;
  const kernels = p.phase === "kernels" && p.total > 0;
  box.classList.toggle("indeterminate", !weights && !kernels);
  $("progress-fill").style.width = weights ? `${(100 * p.loaded / p.total).toFixed(1)}%`
    : kernels ? `${(100 * p.done / p.total).toFixed(1)}%` : "";
  if (weights) {
    $("progress-text").textContent = `${fmtMB(p.loaded)} / ${fmtMB(p.total)} MB · ${p.mbps.toFixed(1)} MB/s${p.fromCache ? " · from cache" : ""}`;
  } else if (kernels) {
    $("progress-text").textContent = `Preparing the GPU kernels… ${p.done} / ${p.total}`;
  } else if (p.text) {
    $("progress-text").textContent = p.text;
  }
}

// "15.0 MB in 11.3 s · download 82.7 MB/s": the rate is the download's own, not the whole load's.
function loadSummary(l) {
  const rate = l.fetched ? ` · download ${(l.fetched / 1e6 / Math.max(l.streamSeconds ?? l.seconds, 1e-3)).toFixed(1)} MB/s` : " · from cache";
  return `${fmtBytes(l.total)} in ${l.seconds.toFixed(1)} s${rate}`;
}

function showModel() {
  const m = app.model, card = m?.card;
  $("model-chip-text").textContent = m ? (card?.name || m.name) : app.loading ? "Loading…" : "No model";
  $("model-chip").classList.toggle("ok", !!m);
  $("model-info").textContent = m ? `${m.name} · RWKV ${m.version} · ${m.n_layer} layers × ${m.n_embd} · vocab ${m.vocab}` +
    (m.quant && m.quant !== "none" ? ` · ${m.quant} weights` : "") : "";
  const c = m ? card : app.cards.get(pickedUrl()); // a loaded model shows its own card (or none)
  $("card-box").hidden = !c;
  if (c) {
    $("card-name").textContent = c.name;
    $("card-kind").textContent = c.kind === "chat" ? "chat model" : "completion model";
    $("card-description").textContent = c.description || "";
    $("card-licence").textContent = c.licence || "not stated";
    $("card-data").textContent = c.training_data || "not stated";
    $("card-context").textContent = c.context_length ? `${c.context_length} tokens` : "not stated";
    $("card-chat").textContent = c.prompt_format?.description || `${(c.prompt_format?.user || "User").trim()} / ${(c.prompt_format?.bot || "Assistant").trim()} turns`;
  }
  if (m?.cardError) notice(`The model card next to ${m.name} is not usable: ${m.cardError}`, "info");
}

function showStats(s = {}) {
  const tps = (v) => (v ? `${v.toFixed(1)} tok/s` : "–");
  $("stat-prefill").textContent = tps(s.prefill_tps);
  $("stat-decode").textContent = tps(s.decode_tps);
  $("stat-py").textContent = s.py_share != null ? `${(100 * s.py_share).toFixed(s.py_share < 0.1 ? 1 : 0)}% (${(1000 * s.py_step_s).toFixed(1)} ms/step)` : "–";
  $("stat-adapter").textContent = app.engine?.adapter || "–";
}

async function refreshCache() {
  try {
    const list = await cachedModels();
    const total = list.reduce((t, m) => t + (m.size || 0), 0);
    $("cache-info").textContent = list.length ? `Cached: ${list.length} model${list.length > 1 ? "s" : ""}, ${fmtBytes(total)}` : "Cache: empty";
  } catch {
    $("cache-info").textContent = "Cache: not available";
  }
}

// ---- loading -------------------------------------------------------------------------------------
async function ensureEngine() {
  if (app.engine) return app.engine;
  const engine = await createEngine({ onProgress: setProgress });
  engine.onDeviceLost((m) => {
    app.model = null;
    app.abort?.abort();
    notice(`The GPU device was lost (${m.message}). Load the model again to continue.`);
    showModel();
    updateControls();
  });
  app.engine = engine;
  $("adapter").textContent = `GPU: ${engine.adapter}`;
  $("adapter").classList.add("ok");
  $("adapter").title = engine.adapter;
  showStats();
  return engine;
}

const pickedUrl = () => $("model-url").value.trim() || $("model-pick").value;

async function loadModel() {
  const url = pickedUrl();
  if (!url) { notice("Pick a model or paste a URL first."); return; }
  if (app.loading) return;
  clearNotice();
  app.abort?.abort();
  const before = app.model;
  const ctrl = new AbortController();
  app.loading = url;
  app.loadAbort = ctrl;
  updateControls();
  showModel();
  setProgress({ phase: "runtime", text: "Starting…" });
  try {
    const engine = await ensureEngine();
    if (ctrl.signal.aborted) throw new DOMException("cancelled", "AbortError");
    const info = await engine.load(url, { onProgress: setProgress, quant: $("quant").value, signal: ctrl.signal });
    app.model = info;
    app.stateOwner = null;
    $("progress-fill").style.width = "100%";
    $("progress").classList.remove("indeterminate");
    $("progress-text").textContent = loadSummary(info.load);
    applySampling(info.card?.sampling);
    setMode(info.card?.kind === "completion" ? "play" : "chat");
    playModelChanged((before?.card || app.cards.get(before?.url))?.sample_prompt);
    setDrawer(null); // on a phone the settings drawer would cover the page that is now ready
  } catch (e) {
    app.model = app.engine?.model ?? null; // a failed load may keep the previous model
    $("progress").hidden = true;
    const still = app.model ? ` ${app.model.card?.name || app.model.name} is still loaded.` : before ? " No model is loaded now: load one to continue." : "";
    if (e.name === "AbortError" || e.kind === "aborted") notice(`Loading was cancelled.${still}`, "info");
    else notice((e.message || String(e)) + still);
    if (e.kind === "nowebgpu" || e.kind === "setup" || (e.kind === "engine" && !app.engine?.adapter)) {
      app.engine?.dispose();
      app.engine = null;
      app.model = null;
    }
  } finally {
    app.loading = null;
    app.loadAbort = null;
    showModel();
    updateControls();
    renderTranscript();
    countContext();
    refreshCache();
  }
}

// ---- settings ------------------------------------------------------------------------------------
function applySampling(values) {
  if (!values) return;
  const byKey = Object.fromEntries(Object.entries(SLIDERS).map(([id, k]) => [k, id]));
  for (const [k, v] of Object.entries(values)) {
    const id = byKey[k];
    if (id) { $(id).value = String(v); $(id).dispatchEvent(new Event("input")); }
  }
}

function bindSliders() {
  const saved = JSON.parse(localStorage.getItem("webrwkv.sampling") || "{}");
  for (const id of Object.keys(SLIDERS)) {
    const input = $(id), out = $(`${id}-out`);
    if (saved[id] != null) input.value = saved[id];
    const show = () => {
      out.textContent = input.value;
      localStorage.setItem("webrwkv.sampling", JSON.stringify(Object.fromEntries(Object.keys(SLIDERS).map((k) => [k, $(k).value]))));
    };
    input.addEventListener("input", show);
    show();
  }
}

async function fillModels() {
  const pick = $("model-pick");
  const add = (label, value, group) => group.append(new Option(label, value));
  try {
    const index = new URL("models/index.json", location.href);
    const r = await fetch(index, { cache: "no-cache" });
    const list = r.ok ? (await r.json()).models || [] : [];
    if (list.length) {
      const g = Object.assign(document.createElement("optgroup"), { label: "Bundled with this site" });
      pick.append(g);
      const urls = list.map((m) => new URL(m.url, index).href); // "/models/x" from the server, "x" in a bundle
      await Promise.all(urls.map(async (u) => {
        try {
          const c = await fetch(u.replace(/\.(safetensors|st)$/, ".card.json"), { cache: "no-cache" });
          if (c.ok) app.cards.set(u, await c.json());
        } catch {}
      }));
      list.forEach((m, i) => add(`${app.cards.get(urls[i])?.name || m.name} (${fmtBytes(m.size)})`, urls[i], g));
    }
  } catch {}
  const g = Object.assign(document.createElement("optgroup"), { label: "Public models (Hugging Face)" });
  pick.append(g);
  for (const m of KNOWN) add(m.name, m.url, g);
}

async function init() {
  bindSliders();
  app.store = await openStore();
  initChat(app);
  initPlay(app);
  const support = await webgpuSupport();
  if (!support.ok) {
    $("nowebgpu").hidden = false;
    $("nowebgpu-text").textContent = support.message;
    app.noGpu = true;
  }
  $("load").onclick = loadModel;
  $("cancel-load").onclick = () => app.loadAbort?.abort();
  $("play-go").addEventListener("click", () => { if (!app.model) loadModel(); });
  $("clear-cache").onclick = async () => { await clearModelCache(); await refreshCache(); };
  // a mode picked while the model list is still loading is kept (the page must not switch under the user)
  $("mode-chat").onclick = () => { app.modePicked = true; setMode("chat"); renderTranscript(); };
  $("mode-play").onclick = () => { app.modePicked = true; setMode("play"); };
  $("settings-toggle").onclick = () => toggleDrawer("side");
  $("model-chip").onclick = () => (isNarrow() ? toggleDrawer("side") : $("model-pick").focus());
  $("convs-toggle").onclick = () => toggleDrawer("convs");
  $("scrim").onclick = () => setDrawer(null);
  $("model-pick").onchange = () => { $("model-url").value = ""; showModel(); renderTranscript(); };
  document.addEventListener("keydown", (e) => {
    if (e.key !== "Escape") return;
    if (app.abort) { e.preventDefault(); app.abort.abort(); } else setDrawer(null);
  });
  refreshCache();
  await fillModels();
  const first = app.cards.get(pickedUrl());
  if (!app.modePicked) setMode(first?.kind === "completion" ? "play" : "chat");
  if (first?.sample_prompt && !$("play-text").value.trim()) $("play-text").value = first.sample_prompt;
  $("play-about").textContent = first ? `${first.name}: ${first.description}` : "";
  showModel();
  await restoreConversations();
  app.ready = true;
  renderTranscript();
  updateControls();
  const q = new URLSearchParams(location.search).get("model");
  if (q) { $("model-url").value = q; if (support.ok) loadModel(); }
}

init();
