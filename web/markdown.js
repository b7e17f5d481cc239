// Markdown for replies: parsed by marked, sanitized by DOMPurify (both vendored at setup), links open
// in a new tab, code blocks get a Copy button. A reply is rendered again from its whole text as tokens
// arrive, so an unfinished fence or list is always drawn as the text so far, never as broken HTML.
import { marked } from "./vendor/marked/marked.esm.js";
import DOMPurify from "./vendor/dompurify/purify.es.mjs";

marked.setOptions({ gfm: true, breaks: true });
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") { node.setAttribute("target", "_blank"); node.setAttribute("rel", "noopener noreferrer"); }
});

export function renderMarkdown(el, text) {
  el.innerHTML = DOMPurify.sanitize(marked.parse(text), { FORBID_TAGS: ["style", "form", "input", "img"] });
  for (const pre of el.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    const lang = /language-([\w+#-]+)/.exec(code?.className || "")?.[1] || "";
    const bar = document.createElement("div");
    bar.className = "code-bar";
    const name = document.createElement("span");
    name.textContent = lang || "text";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy-code";
    copy.textContent = "Copy";
    copy.onclick = () => copyText(code?.textContent ?? pre.textContent, copy);
    bar.append(name, copy);
    pre.prepend(bar);
  }
}

export async function copyText(text, button) {
  let ok = true;
  try { await navigator.clipboard.writeText(text); } catch {
    const ta = Object.assign(document.createElement("textarea"), { value: text });
    document.body.append(ta);
    ta.select();
    ok = document.execCommand("copy");
    ta.remove();
  }
  if (button) {
    const was = button.textContent;
    button.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => (button.textContent = was), 1200);
  }
}
