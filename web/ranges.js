// HTTP Range answers and their bodies, for the model loader (loader.js) and its download workers
// (fetch-worker.js): one Range request whose answer must be a 206, and its body read to its exact length,
// with a clear LoadError for a server that ignores Range, sends too much or too little, or a broken connection.

export class LoadError extends Error {
  constructor(kind, message) { super(message); this.name = "LoadError"; this.kind = kind; }
}

export const short = (url) => { try { return new URL(url).pathname.split("/").pop() || url; } catch { return url; } };

// One Range request; the server must answer 206 (a 200 means it ignored Range). start < 0: the last -start bytes.
// size > 0: the file's size as the load knows it (see rangeCheck).
export async function rangeFetch(url, start, end, signal, size = -1) {
  let r;
  try {
    const range = start < 0 ? `bytes=${start}` : `bytes=${start}-${end - 1}`;
    r = await fetch(url, { headers: { Range: range }, signal, cache: "no-store" });
  } catch (e) {
    if (signal?.aborted) throw new LoadError("aborted", "Loading was cancelled.");
    throw new LoadError("network", `Could not download ${short(url)} (${e.message}). Check the URL and your connection; ` +
      "a server on another site must allow cross-origin requests (CORS).");
  }
  if (r.status === 200) {
    try { await r.body?.cancel(); } catch {}
    throw new LoadError("norange", `The server of ${short(url)} ignored the Range request (it answered 200 with the ` +
      "whole file). webrwkv streams models with HTTP Range requests: use a server that supports them " +
      "(for example `webrwkv serve`, Hugging Face 'resolve' URLs, most CDNs and static hosts).");
  }
  if (r.status === 404) throw new LoadError("http", `${short(url)} was not found on the server (404). Check the URL.`);
  if (r.status === 401 || r.status === 403) {
    throw new LoadError("http", `The server refused ${short(url)} (${r.status}): the file may need a login or may be private.`);
  }
  if (r.status !== 206) throw new LoadError("http", `Downloading ${short(url)} failed: HTTP ${r.status} ${r.statusText}.`);
  const bad = rangeCheck(url, r.headers.get("Content-Range"), start, size);
  if (bad) {
    try { await r.body?.cancel(); } catch {}
    throw new LoadError("badfile", bad);
  }
  return r;
}

// What is wrong with an answer's Content-Range (where CORS lets the page see it), or "": it must start where
// the request did, and be of a file of the size the load knows. A server that answers another range, a file
// that changed while it loaded, or a mirror that holds another file would otherwise give wrong bytes.
function rangeCheck(url, header, start, size) {
  const m = /^bytes (\d+)-\d+\/(\d+|\*)$/.exec(header?.trim() ?? "");
  if (!m) return "";
  const total = m[2] === "*" ? NaN : Number(m[2]);
  if (size > 0 && Number.isFinite(total) && total !== size) {
    return `${where(url)} is ${total} bytes where the load expects ${size}: the file changed while it loaded, or a ` +
      "mirror holds another file. Load it again; every mirror must serve the same file.";
  }
  const first = start >= 0 ? start : Number.isFinite(total) ? Math.max(0, total + start) : NaN;
  if (Number.isFinite(first) && Number(m[1]) !== first) {
    return `The server of ${short(url)} answered bytes from ${m[1]} when asked for bytes from ${first}: it does not ` +
      "handle Range requests correctly.";
  }
  return "";
}

// A URL's host and file name, for messages about mirrors.
export const where = (url) => { try { const u = new URL(url); return `${u.host}/${short(url)}`; } catch { return url; } };

// Reads a Range answer's body into `into` (its exact length), chunk by chunk as the stream gives them.
export async function readBody(r, into, onBytes, signal) {
  const reader = r.body.getReader();
  let n = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (n + value.length > into.length) throw new LoadError("badfile", "The server sent more bytes than asked for.");
      into.set(value, n);
      n += value.length;
      onBytes(value.length);
    }
  } catch (e) {
    throw bodyError(e, signal);
  }
  return complete(into, n);
}

// The same into a new buffer of n bytes, which it returns. Where the body is a byte stream (Chromium,
// Firefox), the stream writes straight into that buffer ("bring your own buffer"), so no chunk is copied:
// Chromium on an H200 moved 1.6 GB/s through four download workers this way where the chunk-by-chunk copy moved
// 1.35 (bench/RESULTS.md). A buffer read this way is moved, not copied, so a GPU buffer's mapped range (which
// cannot be moved) takes readBody.
export async function download(r, n, onBytes, signal) {
  let reader;
  try { reader = r.body.getReader({ mode: "byob" }); } catch { return readBody(r, new Uint8Array(n), onBytes, signal); }
  let buf = new ArrayBuffer(n), got = 0;
  try {
    while (got < n) {
      const { done, value } = await reader.read(new Uint8Array(buf, got, n - got));
      if (value) buf = value.buffer; // the read moved the buffer: this is it now
      if (done) break;
      got += value.byteLength;
      onBytes(value.byteLength);
    }
    if (got === n && !(await reader.read(new Uint8Array(1))).done) {
      reader.cancel().catch(() => {});
      throw new LoadError("badfile", "The server sent more bytes than asked for.");
    }
  } catch (e) {
    throw bodyError(e, signal);
  }
  return complete(new Uint8Array(buf), got);
}

const bodyError = (e, signal) => {
  if (signal?.aborted) return new LoadError("aborted", "Loading was cancelled.");
  if (e instanceof LoadError) return e;
  return new LoadError("network", `The download broke off (${e.message}). Check your connection and load again.`);
};

const complete = (into, n) => {
  if (n !== into.length) {
    throw new LoadError("network", `The server sent ${n} of ${into.length} bytes: the download broke off or the file changed. Load again.`);
  }
  return into;
};
