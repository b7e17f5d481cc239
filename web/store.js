// Conversations kept in this browser (IndexedDB), newest first; an in-memory stand-in when the
// browser refuses storage (some private modes), so the page still works until the tab is closed.
const DB = "webrwkv";
const STORE = "conversations";

const req = (r) => new Promise((resolve, reject) => { r.onsuccess = () => resolve(r.result); r.onerror = () => reject(r.error); });

async function openDb() {
  const r = indexedDB.open(DB, 1);
  r.onupgradeneeded = () => r.result.createObjectStore(STORE, { keyPath: "id" });
  return req(r);
}

export async function openStore() {
  let db = null;
  try { db = await openDb(); } catch (e) { console.warn("conversations are not saved:", e?.message); }
  const mem = new Map();
  const tx = (mode) => db.transaction(STORE, mode).objectStore(STORE);
  return {
    persistent: !!db,
    async list() {
      const all = db ? await req(tx("readonly").getAll()) : [...mem.values()];
      return all.sort((a, b) => b.updated - a.updated);
    },
    async get(id) { return db ? req(tx("readonly").get(id)) : mem.get(id); },
    async put(conv) {
      const copy = structuredClone(conv);
      if (db) await req(tx("readwrite").put(copy)); else mem.set(copy.id, copy);
    },
    async remove(id) { if (db) await req(tx("readwrite").delete(id)); else mem.delete(id); },
  };
}

export function newConversation() {
  const now = Date.now();
  return { id: `c${now.toString(36)}${Math.random().toString(36).slice(2, 6)}`, title: "", system: "",
    messages: [], created: now, updated: now };
}

export const titleOf = (conv) => conv.title || conv.messages.find((m) => m.role === "user")?.content.slice(0, 60) || "New chat";

// Exports: Markdown for people, JSON (OpenAI-style messages) for programs.
export function toMarkdown(conv) {
  const who = { user: "You", assistant: "Model", system: "System" };
  const parts = [`# ${titleOf(conv)}`, `_${new Date(conv.created).toLocaleString()}_`];
  if (conv.system) parts.push(`**System:** ${conv.system}`);
  for (const m of conv.messages) parts.push(`**${who[m.role]}:**\n\n${m.content}`);
  return parts.join("\n\n") + "\n";
}

export function toJson(conv) {
  const messages = [...(conv.system ? [{ role: "system", content: conv.system }] : []),
    ...conv.messages.map(({ role, content }) => ({ role, content }))];
  return JSON.stringify({ title: titleOf(conv), created: new Date(conv.created).toISOString(), model: conv.model || null, messages }, null, 2) + "\n";
}
