// Chat mode: conversations (saved in IndexedDB, listed in the sidebar), a transcript with markdown
// replies, copy / edit / delete / regenerate on messages, a system prompt and a token counter.
// Every reply is one engine.chat.completions.create call over the messages before it, so
// regenerate and edit-and-resend are calls with a shorter or changed message list.
import { renderMarkdown, copyText } from "./markdown.js";
import { newConversation, titleOf, toMarkdown, toJson } from "./store.js";
import { $, notice, clearNotice, download, stickToBottom } from "./ui.js";

let app;
const conv = () => app.conv;

export function initChat(theApp) {
  app = theApp;
  $("composer").onsubmit = (ev) => { ev.preventDefault(); send(); };
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  $("input").addEventListener("input", () => { autoGrow($("input")); countDraft(); });
  $("stop").onclick = () => app.abort?.abort();
  $("new-chat").onclick = () => { openConversation(newConversation()); app.closeDrawers(); };
  $("system-toggle").onclick = () => {
    const box = $("system-box");
    box.hidden = !box.hidden;
    $("system-toggle").setAttribute("aria-expanded", String(!box.hidden));
    if (!box.hidden) $("system").focus();
  };
  $("system").addEventListener("input", () => { conv().system = $("system").value; save(); countContext(); });
  $("export-md").onclick = () => download(`${fileName()}.md`, toMarkdown(conv()), "text/markdown");
  $("export-json").onclick = () => download(`${fileName()}.json`, toJson(conv()), "application/json");
}

const fileName = () => titleOf(conv()).replace(/[^\w -]+/g, "").trim().slice(0, 40).replace(/\s+/g, "-") || "conversation";

function autoGrow(ta) {
  ta.style.height = "auto";
  ta.style.height = `${Math.min(ta.scrollHeight, innerHeight * 0.3)}px`;
}

// ---- conversations -------------------------------------------------------------------------------
export async function restoreConversations() {
  const list = await app.store.list();
  const last = list.find((c) => c.id === localStorage.getItem("webrwkv.conv")) || list[0];
  openConversation(last || newConversation());
  await renderList(list);
}

export function openConversation(c) {
  if (app.busy === "chat") app.abort?.abort();
  app.conv = c;
  localStorage.setItem("webrwkv.conv", c.id);
  $("system").value = c.system || "";
  $("system-box").hidden = !c.system;
  renderTranscript();
  renderList();
  countContext();
}

async function save() {
  const c = conv();
  if (!c.messages.length && !c.system) return; // an untouched new chat is not listed
  c.updated = Date.now();
  c.model = app.model?.url || c.model;
  await app.store.put(c);
  await renderList();
}

async function renderList(list) {
  list ??= await app.store.list();
  const ul = $("conv-list");
  ul.textContent = "";
  for (const c of list) {
    const li = document.createElement("li");
    li.className = "conv" + (c.id === conv()?.id ? " active" : "");
    const open = Object.assign(document.createElement("button"), { className: "conv-open", title: titleOf(c) });
    const t = Object.assign(document.createElement("span"), { className: "conv-title", textContent: titleOf(c) });
    const d = Object.assign(document.createElement("span"), { className: "conv-date", textContent: when(c.updated) });
    open.append(t, d);
    open.onclick = async () => { openConversation(await app.store.get(c.id)); app.closeDrawers(); };
    const del = Object.assign(document.createElement("button"), { className: "conv-del", textContent: "×", title: "Delete this conversation" });
    del.setAttribute("aria-label", `Delete ${titleOf(c)}`);
    del.onclick = async () => {
      if (!confirm(`Delete "${titleOf(c)}"?`)) return;
      await app.store.remove(c.id);
      if (c.id === conv().id) openConversation(newConversation());
      await renderList();
    };
    li.append(open, del);
    ul.append(li);
  }
  $("conv-empty").textContent = list.length ? "" : app.store.persistent
    ? "Your conversations are kept in this browser." : "This browser does not allow saving: conversations last until you close the tab.";
}

function when(t) {
  const d = new Date(t), now = new Date();
  return d.toDateString() === now.toDateString() ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : d.toLocaleDateString([], { month: "short", day: "numeric" });
}

// ---- the transcript ------------------------------------------------------------------------------
export function renderTranscript() {
  const t = $("transcript");
  t.textContent = "";
  $("conv-title").textContent = titleOf(conv());
  if (!conv().messages.length) t.append(app.emptyState("chat"));
  conv().messages.forEach((m, i) => t.append(messageView(m, i)));
  t.scrollTop = t.scrollHeight;
  updateChatControls();
}

function messageView(m, i) {
  const row = document.createElement("div");
  row.className = `msg ${m.role === "user" ? "user" : "bot"}`;
  row.dataset.index = i;
  const av = Object.assign(document.createElement("div"), { className: "avatar", textContent: m.role === "user" ? "You" : "AI" });
  const col = Object.assign(document.createElement("div"), { className: "col" });
  const bubble = Object.assign(document.createElement("div"), { className: "bubble" });
  fill(bubble, m);
  const foot = Object.assign(document.createElement("div"), { className: "msg-foot" });
  const meta = Object.assign(document.createElement("span"), { className: "meta", textContent: m.meta || "" });
  const tools = Object.assign(document.createElement("span"), { className: "tools" });
  const tool = (label, title, f) => {
    const b = Object.assign(document.createElement("button"), { type: "button", className: "tool", textContent: label, title });
    b.onclick = f;
    tools.append(b);
    return b;
  };
  const copyBtn = tool("Copy", "Copy this message", () => copyText(m.content, copyBtn));
  if (m.role === "user") tool("Edit", "Edit and send again", () => edit(i, row));
  else tool("Regenerate", "Write this reply again", () => regenerate(i));
  tool("Delete", "Delete this message", () => removeMessage(i));
  foot.append(meta, tools);
  col.append(bubble, foot);
  row.append(av, col);
  return row;
}

function fill(bubble, m) {
  if (m.role === "user") { bubble.classList.add("plain"); bubble.textContent = m.content; }
  else renderMarkdown(bubble, m.content.trimEnd());
}

function edit(i, row) {
  if (app.busy) return;
  const bubble = row.querySelector(".bubble");
  const ta = Object.assign(document.createElement("textarea"), { className: "edit-box", value: conv().messages[i].content });
  const bar = Object.assign(document.createElement("div"), { className: "edit-bar" });
  const ok = Object.assign(document.createElement("button"), { type: "button", className: "primary", textContent: "Save & send" });
  const cancel = Object.assign(document.createElement("button"), { type: "button", textContent: "Cancel" });
  ok.disabled = !app.model;
  ok.title = app.model ? "" : "Load a model first";
  bar.append(cancel, ok);
  bubble.replaceWith(ta);
  row.querySelector(".msg-foot").replaceWith(bar);
  row.classList.add("editing");
  ta.focus();
  autoGrow(ta);
  ta.addEventListener("input", () => autoGrow(ta));
  cancel.onclick = () => renderTranscript();
  ok.onclick = () => {
    const text = ta.value.trim();
    if (!text) return;
    conv().messages = conv().messages.slice(0, i);
    conv().messages.push({ role: "user", content: text });
    renderTranscript();
    reply();
  };
  ta.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); ok.click(); }
    if (e.key === "Escape") { e.stopPropagation(); cancel.click(); }
  });
}

function removeMessage(i) {
  if (app.busy) return;
  conv().messages.splice(i, 1);
  renderTranscript();
  save();
  countContext();
}

function regenerate(i) {
  if (app.busy || !app.model) return;
  conv().messages = conv().messages.slice(0, i);
  renderTranscript();
  reply();
}

// ---- sending -------------------------------------------------------------------------------------
export function updateChatControls() {
  const ready = !!app.model && !app.loading;
  const busy = app.busy === "chat";
  $("send").disabled = !ready || !!app.busy;
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  $("input").placeholder = app.model ? "Message…" : "Load a model to start…";
  for (const b of document.querySelectorAll("#transcript .tool")) {
    if (b.textContent !== "Copy") b.disabled = !!app.busy || (b.textContent === "Regenerate" && !ready);
  }
}

function send() {
  const text = $("input").value.trim();
  if (!text || !app.model || app.busy) return;
  $("input").value = "";
  autoGrow($("input"));
  conv().messages.push({ role: "user", content: text });
  if (conv().messages.length === 1) $("conv-title").textContent = titleOf(conv());
  $("transcript").querySelector(".empty")?.remove();
  $("transcript").append(messageView(conv().messages.at(-1), conv().messages.length - 1));
  reply();
}

const messagesFor = (c) => [...(c.system.trim() ? [{ role: "system", content: c.system }] : []),
  ...c.messages.map(({ role, content }) => ({ role, content }))];

async function reply() {
  const c = conv();
  const msg = { role: "assistant", content: "", meta: "" };
  const request = messagesFor(c);
  c.messages.push(msg);
  const row = messageView(msg, c.messages.length - 1);
  const bubble = row.querySelector(".bubble");
  bubble.classList.add("streaming");
  $("transcript").append(row);
  $("transcript").scrollTop = $("transcript").scrollHeight;
  clearNotice();
  const ctrl = new AbortController();
  app.abort = ctrl;
  app.setBusy("chat");
  app.stateOwner = "chat";
  let usage = null, finish = "", frame = 0;
  const draw = () => { frame = 0; renderMarkdown(bubble, msg.content); stickToBottom($("transcript")); };
  try {
    // the context count goes up as the reply streams, a token a piece (the usage at its end is exact)
    let live = await app.engine.countTokens(request).catch(() => null);
    const stream = await app.engine.chat.completions.create({ messages: request, stream: true, ...app.sampling(),
      stream_options: { include_usage: true } }, { signal: ctrl.signal });
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      const ch = chunk.choices[0];
      if (!ch) continue;
      if (ch.finish_reason) finish = ch.finish_reason;
      if (ch.delta.content) { msg.content += ch.delta.content; frame ||= requestAnimationFrame(draw); }
      if (live != null && ch.delta.content) showContext(++live); // (white space held back is counted at the end)
    }
  } catch (e) {
    if (e.name === "AbortError") finish = "stopped";
    else { notice(e.message || String(e)); finish = "failed"; }
  } finally {
    cancelAnimationFrame(frame);
    app.abort = null;
    msg.content = msg.content.trim();
    const s = app.engine?.stats || {};
    const why = { length: " · max tokens", stopped: " · stopped", failed: " · failed" }[finish] ?? "";
    msg.meta = `${s.completion_tokens ?? 0} tokens · ${s.decode_tps ? s.decode_tps.toFixed(1) : "–"} tok/s${why}`;
    if (usage) app.context = usage.total_tokens;
    if (!msg.content && finish !== "failed" && finish !== "stopped") msg.content = "";
    app.setBusy(null);
    app.showStats(s);
    renderTranscript();
    save();
    showContext(usage ? usage.total_tokens : null);
    if (!usage) countContext();
  }
}

// ---- tokens --------------------------------------------------------------------------------------
let draftTimer = 0, draftTokens = 0, contextTokens = null;

function showContext(n) {
  if (n != null) contextTokens = n;
  const el = $("tokens");
  if (!app.model) { el.textContent = ""; el.classList.remove("over"); return; }
  const ctx = app.model.card?.context_length || 0;
  const total = (contextTokens ?? 0) + draftTokens;
  el.textContent = `${contextTokens ?? "…"} tokens in context` + (draftTokens ? ` + ${draftTokens} typed` : "") +
    (ctx ? ` · trained on ${ctx}` : "");
  el.classList.toggle("over", !!ctx && total > ctx);
  el.title = ctx ? `The model was trained on texts of ${ctx} tokens; past that its replies get worse.` : $("tokens").title;
}

// The tokens of the conversation as the model reads it (its chat format, the system prompt, every message).
export async function countContext() {
  if (!app.model || !app.engine) { showContext(null); return; }
  try {
    const c = conv();
    contextTokens = c.messages.length || c.system.trim() ? await app.engine.countTokens(messagesFor(c)) : 0;
  } catch { contextTokens = null; }
  showContext();
}

function countDraft() {
  clearTimeout(draftTimer);
  draftTimer = setTimeout(async () => {
    const text = $("input").value.trim();
    draftTokens = text && app.model && !app.busy ? await app.engine.countTokens(text).catch(() => 0) : 0;
    showContext();
  }, 250);
}
