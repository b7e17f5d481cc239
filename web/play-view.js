// Playground mode: the model continues a text. The text is one editable document; while the model
// writes, its tokens are appended. If the text still starts with what the model has read, only the new
// part is fed (the state carries on); after an edit anywhere else the model reads it all again.
import { $, notice, clearNotice } from "./ui.js";

let app;
const play = { fed: null, undo: null };
const KEY = "webrwkv.playground";

export function initPlay(theApp) {
  app = theApp;
  const ta = $("play-text");
  ta.value = localStorage.getItem(KEY) ?? "";
  ta.addEventListener("input", () => { localStorage.setItem(KEY, ta.value); count(); });
  ta.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); generate(); }
  });
  $("play-go").onclick = generate;
  $("play-stop").onclick = () => app.abort?.abort();
  $("play-undo").onclick = () => {
    if (play.undo == null || app.busy) return;
    setText(play.undo);
    play.undo = null;
    play.fed = null;
    updatePlayControls();
  };
  $("play-sample").onclick = () => {
    if (app.busy) return;
    play.undo = ta.value;
    setText(app.model?.card?.sample_prompt || "");
    play.fed = null;
    updatePlayControls();
    ta.focus();
  };
}

function setText(t) {
  $("play-text").value = t;
  localStorage.setItem(KEY, t);
  count();
}

// A new model: its sample prompt when the text is empty or still the previous model's sample.
export function playModelChanged(previousSample) {
  play.fed = null;
  const ta = $("play-text");
  const sample = app.model?.card?.sample_prompt || "";
  if (sample && (!ta.value.trim() || ta.value === previousSample)) setText(sample);
  const card = app.model?.card;
  $("play-about").textContent = !app.model ? "" : card
    ? `${card.name}: ${card.description}` : `${app.model.name} has no model card; it continues whatever you write.`;
  updatePlayControls();
  count();
}

export function updatePlayControls() {
  const busy = app.busy === "play";
  $("play-go").disabled = !app.model || !!app.loading || !!app.busy;
  $("play-go").hidden = busy;
  $("play-stop").hidden = !busy;
  $("play-undo").disabled = play.undo == null || !!app.busy;
  $("play-sample").disabled = !app.model?.card?.sample_prompt || !!app.busy;
  $("play-text").readOnly = busy;
}

async function generate() {
  const ta = $("play-text");
  const text = ta.value;
  if (!app.model || app.busy || !text) return;
  clearNotice();
  const ctrl = new AbortController();
  app.abort = ctrl;
  app.setBusy("play");
  play.undo = text;
  try {
    let prompt = text;
    if (app.stateOwner === "play" && play.fed != null && text.startsWith(play.fed)) prompt = text.slice(play.fed.length);
    else await app.engine.reset();
    app.stateOwner = "play"; // a chat in between resets the state; then the text is read again
    play.fed = text;
    const s = app.sampling();
    const opts = { maxTokens: s.max_tokens, temperature: s.temperature, topP: s.top_p,
      presencePenalty: s.presence_penalty, frequencyPenalty: s.frequency_penalty, signal: ctrl.signal };
    // the count goes up a token at a time while the model writes (the worker is busy: no recounting then;
    // the exact count of the whole text follows when it is done)
    let n = await app.engine.countTokens(text).catch(() => null);
    for await (const { text: piece } of app.engine.generate(prompt, opts)) {
      ta.value += piece;
      play.fed = ta.value;
      ta.scrollTop = ta.scrollHeight;
      if (n != null) showCount(++n);
    }
  } catch (e) {
    if (e.name !== "AbortError") { notice(e.message || String(e)); play.fed = null; }
  } finally {
    app.abort = null;
    localStorage.setItem(KEY, ta.value);
    app.setBusy(null);
    app.showStats(app.engine?.stats || {});
    count();
  }
}

let timer = 0;
function count() {
  clearTimeout(timer);
  timer = setTimeout(async () => {
    if (!app.model) { showCount(null); return; }
    if (app.busy) return;
    showCount(await app.engine.countTokens($("play-text").value).catch(() => null));
  }, 250);
}

function showCount(n) {
  const el = $("play-tokens");
  const ctx = app.model?.card?.context_length || 0;
  el.textContent = n == null ? "" : `${n} tokens` + (ctx ? ` · trained on ${ctx}` : "");
  el.classList.toggle("over", n != null && !!ctx && n > ctx);
}
