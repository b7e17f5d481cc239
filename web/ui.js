// Small pieces shared by the page's modules: element lookup, the notice line, sizes, downloads.
export const $ = (id) => document.getElementById(id);

export function notice(text, kind = "error") {
  const el = $("status");
  el.className = `notice ${kind}`;
  el.textContent = "";
  const close = Object.assign(document.createElement("button"), { className: "close", textContent: "×", title: "Dismiss" });
  close.onclick = () => (el.hidden = true);
  const msg = Object.assign(document.createElement("span"), { className: "notice-text", textContent: text });
  el.append(close, msg);
  el.hidden = false;
}
export const clearNotice = () => ($("status").hidden = true);

const mb = (n) => (n / 1e6).toFixed(n < 1e7 ? 2 : 1);
export const fmtBytes = (n) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${mb(n)} MB`);
export const fmtMB = mb;

export function download(name, text, type) {
  const a = Object.assign(document.createElement("a"), { href: URL.createObjectURL(new Blob([text], { type })), download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

// The element's tallest scroll position is kept while the user is near the bottom.
export function stickToBottom(el) {
  if (el.scrollHeight - el.scrollTop - el.clientHeight < 120) el.scrollTop = el.scrollHeight;
}

export const isNarrow = () => matchMedia("(max-width: 1100px)").matches;
