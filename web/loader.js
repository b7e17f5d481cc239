// Streaming model loader: the tensor index by Range requests (a safetensors header, or a .pth's zip tail
// and pickle), then tensor data in <= 32 MB blocks, fetched by a few download workers (fetch-worker.js) or,
// where none can start, here; each block goes into a GPU buffer mapped at creation and is copied on the GPU
// to its tensors, with a Cache API copy so the next load of the same file needs no weight requests.
// (Chromium on an H200: mapped staging moved 2.4 GB/s where writeBuffer of the same 32 MB blocks moved
// 0.8 GB/s; the fetches of one thread 0.6 GB/s, of four workers 1.1-1.4 GB/s, 1.6 GB/s read as ranges.js's
// download() reads them.) The Range requests and their bodies are ranges.js's.
import { LoadError, download, rangeFetch, readBody, short, where } from "./ranges.js";

export { LoadError };

export const BLOCK = 32 << 20;
const IN_FLIGHT = 3;     // blocks in flight, fetched in this thread
const WORKERS = 4;       // download workers a host (2 in all where the device says it has under 8 GB: blocks in
const MAX_WORKERS = 8;   // flight cost memory), at most 8 with mirrors
const PER_WORKER = 2;    // blocks in flight each
const EARLY = 4;         // blocks a worker downloads while the load is planned, of WORKERS at most (see prefetch)
const PREFIX = 4096;
const CACHE = "webrwkv-models-v1";

// First bytes of the file: the 8-byte header length plus the JSON header.
// Returns {prefix (Uint8Array), size, etag}; the caller (Python) validates the header.
export async function fetchHeader(url, signal) {
  const r = await rangeFetch(url, 0, PREFIX, signal);
  const cr = r.headers.get("Content-Range");
  const etag = r.headers.get("ETag") || "";
  let size = cr ? Number(cr.split("/").pop()) : NaN;
  let prefix = new Uint8Array(await r.arrayBuffer());
  if (!Number.isFinite(size)) size = -1; // hidden by CORS: Python derives it from the header
  const lfs = new TextDecoder().decode(prefix.subarray(0, 8)) === "version ";
  if (prefix.length >= 8 && !lfs && prefix[0] !== 0x3c) {
    const n = Number(new DataView(prefix.buffer, prefix.byteOffset).getBigUint64(0, true));
    const need = 8 + n;
    if (n < 100 * 2 ** 20 && need > prefix.length && (size < 0 || need <= size)) {
      const rest = await download(await rangeFetch(url, prefix.length, need, signal), need - prefix.length, () => {}, signal);
      const all = new Uint8Array(need);
      all.set(prefix);
      all.set(rest, prefix.length);
      prefix = all;
    }
  }
  return { prefix, size, etag };
}

export const isZip = (b) => b.length >= 4 && b[0] === 0x50 && b[1] === 0x4b && b[2] === 3 && b[3] === 4;

// Fetched pieces [[offset (-1: ends at the file's end), Uint8Array], ...] in one blob for Python
// (browser_index.PrefixSource): magic, u32 count, then per piece u64 offset, u64 length, the bytes.
const PIECES = new TextEncoder().encode("webrwkv-pieces\u0000\u0001");
function packPieces(pieces) {
  const total = PIECES.length + 4 + pieces.reduce((t, [, b]) => t + 16 + b.length, 0);
  const out = new Uint8Array(total);
  const dv = new DataView(out.buffer);
  out.set(PIECES);
  dv.setUint32(PIECES.length, pieces.length, true);
  let pos = PIECES.length + 4;
  for (const [o, b] of pieces) {
    dv.setBigUint64(pos, o < 0 ? 0xFFFFFFFFFFFFFFFFn : BigInt(o), true);
    dv.setBigUint64(pos + 8, BigInt(b.length), true);
    out.set(b, pos + 16);
    pos += 16 + b.length;
  }
  return out;
}

// A .pth (torch.save zip) keeps its index in two places: the zip directory at the end and the pickle near
// the start. Python says which ranges it still needs (needs(blob, size) -> [[start, end], ...], start < 0
// for the last -start bytes), round by round; usually the tail, then the pickle. Returns the pieces as one
// blob in place of the prefix.
export async function fetchIndex(url, first, needs, signal) {
  const pieces = [[0, first.prefix]];
  for (let round = 0; round < 8; round++) {
    const blob = packPieces(pieces);
    const want = needs(blob, first.size);
    if (!want.length) return { ...first, prefix: blob };
    pieces.push(...await Promise.all(want.map(async ([s, e]) => {
      const r = await rangeFetch(url, s, e, signal);
      if (s < 0) return [-1, new Uint8Array(await r.arrayBuffer())];
      return [s, await download(r, e - s, () => {}, signal)];
    })));
  }
  throw new LoadError("badfile", `The index of ${short(url)} is spread over more of the file than a torch.save checkpoint's: ` +
    "convert it to safetensors with `webrwkv convert`.");
}

// ---- cache --------------------------------------------------------------------
const keyFor = (url, what) => url + (url.includes("?") ? "&" : "?") + "webrwkv-cache=" + what;

export async function identity(size, etag, prefix) {
  const tag = new TextEncoder().encode(`${size}|${etag}|`);
  const all = new Uint8Array(tag.length + prefix.length);
  all.set(tag);
  all.set(prefix, tag.length);
  const h = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  return Array.from(h.subarray(0, 12), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function openCache() {
  try { return await caches.open(CACHE); } catch { return null; } // no Cache API: load without caching
}

export async function listCached() {
  const cache = await openCache();
  if (!cache) return [];
  const out = [];
  for (const req of await cache.keys()) {
    if (!req.url.endsWith("webrwkv-cache=complete")) continue;
    const meta = await (await cache.match(req)).json();
    out.push({ url: meta.url, size: meta.size, time: meta.time });
  }
  return out;
}

export async function clearCache() {
  try { return await caches.delete(CACHE); } catch { return false; }
}

// Drop every cached block of `url` that belongs to another version of the file.
async function dropStale(cache, url, ident) {
  const prefix = keyFor(url, "");
  for (const req of await cache.keys()) {
    if (req.url.startsWith(prefix) && !req.url.startsWith(prefix + ident)) await cache.delete(req);
  }
}

// ---- download workers -----------------------------------------------------------
// fetchPool().get(url, start, end, onBytes, signal, size) -> Promise<Uint8Array>, from `n` workers in turn. A worker
// that cannot start (no module workers, the script missing) fails its jobs over to this thread, so a load
// never depends on it; a LoadError from a worker is the one this thread would have raised.
function fetchPool(n) {
  const jobs = new Map();
  let seq = 0;
  const local = (url, start, end, onBytes, signal, size) =>
    rangeFetch(url, start, end, signal, size).then((r) => download(r, end - start, onBytes, signal));
  const spawn = () => {
    let w;
    try { w = new Worker(new URL("./fetch-worker.js", import.meta.url), { type: "module", name: "webrwkv download" }); } catch { return null; }
    const slot = { w, ok: true };
    w.onmessage = ({ data }) => {
      const j = jobs.get(data.id);
      if (!j) return;
      if (data.bytes) j.onBytes(data.bytes);
      if (data.error) { jobs.delete(data.id); j.reject(new LoadError(data.error.kind, data.error.message)); }
      else if (data.done) { jobs.delete(data.id); j.resolve(new Uint8Array(data.done)); }
    };
    w.onerror = (e) => { // the worker itself failed: its jobs go on here
      e.preventDefault?.();
      slot.ok = false;
      for (const [id, j] of jobs) {
        if (j.slot !== slot) continue;
        jobs.delete(id);
        local(...j.args).then(j.resolve, j.reject);
      }
    };
    return slot;
  };
  const slots = Array.from({ length: n }, spawn).filter(Boolean);
  let turn = 0;
  return {
    get(url, s, e, onBytes, signal, size) {
      if (signal?.aborted) return Promise.reject(new LoadError("aborted", "Loading was cancelled."));
      const live = slots.filter((x) => x.ok);
      if (!live.length) return local(url, s, e, onBytes, signal, size);
      const slot = live[turn++ % live.length];
      const id = ++seq;
      const onAbort = () => slot.w.postMessage({ abort: id });
      signal?.addEventListener("abort", onAbort, { once: true });
      return new Promise((resolve, reject) => {
        jobs.set(id, { resolve, reject, onBytes, slot, args: [url, s, e, onBytes, signal, size] });
        slot.w.postMessage({ id, url, start: s, end: e, size });
      }).finally(() => signal?.removeEventListener("abort", onAbort));
    },
    get workers() { return slots.filter((x) => x.ok).length; },
    close() { // the load ended (or failed): jobs still out end as cancelled
      for (const x of slots) x.w.terminate();
      for (const j of jobs.values()) j.reject(new LoadError("aborted", "Loading was cancelled."));
      jobs.clear();
    },
  };
}

const workerCount = (hosts) => ((globalThis.navigator?.deviceMemory ?? 8) < 8 ? WORKERS / 2 : Math.min(MAX_WORKERS, WORKERS * hosts));

// ---- mirrors --------------------------------------------------------------------
// More hosts serving the same file: block k comes from urls[k % urls.length]. A browser opens at most 6
// connections to a host, so hosts far away or slow each add their own; from one fast server (an H200 host,
// bench/browser.py --mirror-host) a second host name moved 3-10 % more, since Chromium's fetch path is the
// limit there at about 1.4-1.5 GB/s (bench/RESULTS.md). checkMirrors() makes sure each mirror answers Range
// requests and starts with the model's first bytes (`head`: the header, which places every tensor); every
// block's answer is then checked against the file's size (ranges.js).
export async function checkMirrors(url, mirrors, head, size, signal) {
  await Promise.all(mirrors.map(async (m) => {
    const got = await download(await rangeFetch(m, 0, head.length, signal, size), head.length, () => {}, signal);
    if (got.some((b, i) => b !== head[i])) {
      throw new LoadError("badfile", `The mirror ${where(m)} does not hold the same file as ${where(url)} (their first ` +
        `${head.length} bytes differ): every mirror must serve the same file.`);
    }
  }));
}

// ---- the first blocks, while the load is planned -----------------------------------
// The page's Python plans a load (the kernels' dry run, the GPU buffers) before any weight is written: about a
// second for a 3 GB model. prefetch() starts the download workers on the stream's first blocks meanwhile, at
// most EARLY each (held in memory until streamWrites takes them, with the pool, as `early`). Null where the
// cache holds the whole model or there are no workers. close() ends it if the load stops before its stream.
export async function prefetch({ url, mirrors = [], size, ident, dataStart, signal, useCache = true, block = BLOCK }) {
  if (typeof Worker !== "function") return null;
  const cache = useCache ? await openCache() : null;
  const meta = cache ? await (await cache.match(keyFor(url, "complete")))?.json() : null;
  if (meta && meta.ident === ident) return null;
  const r0 = dataStart - (dataStart % 4), nblocks = Math.ceil((size - r0) / block);
  if (nblocks < 2) return null;
  const urls = [url, ...mirrors];
  const t0 = performance.now(), pool = fetchPool(workerCount(urls.length));
  if (!pool.workers) { pool.close(); return null; }
  let sink = null, bytes = 0;
  const onBytes = (n) => { if (sink) sink(n); else bytes += n; };
  const blocks = new Map();
  for (let k = 0; k < Math.min(nblocks, EARLY * Math.min(pool.workers, WORKERS)); k++) {
    const p = pool.get(urls[k % urls.length], r0 + k * block, Math.min(size, r0 + (k + 1) * block), onBytes, signal, size);
    p.catch(() => {}); // its error is raised where the stream awaits it; a block never awaited must not be unhandled
    blocks.set(k, p);
  }
  // take(onBytes): the stream's progress counter from now on; returns the bytes that arrived before
  return { pool, blocks, block, r0, size, hosts: urls.length, t0, take(f) { sink = f; return bytes; }, close() { pool.close(); } };
}

// ---- streaming ----------------------------------------------------------------
// writes: [[fileStart, fileEnd, gpuBuffer, dstOffset, tag], ...], all 4-byte aligned
// (fileEnd may pass the file's end by up to 3 bytes: zero padding). A null gpuBuffer asks for a
// staging buffer of the write's size, made here when its first bytes arrive and handed to
// onWriteDone(tag, buffer) once complete (the caller converts it on the GPU and frees it).
export async function streamWrites({ url, mirrors = [], device, size, ident, dataStart, writes, onProgress, onWriteDone, signal,
  useCache = true, block = BLOCK, early = null }) { // block: smaller only in tests (many blocks from a small file); early: prefetch()'s
  const r0 = dataStart - (dataStart % 4), urls = [url, ...mirrors];
  const urlOf = (k) => urls[k % urls.length]; // block k's host
  if (early && (early.r0 !== r0 || early.block !== block || early.size !== size || early.hosts !== urls.length)) {
    throw new Error("prefetch: another block grid");
  }
  const nblocks = Math.ceil((size - r0) / block);
  const pieces = Array.from({ length: nblocks }, () => []);
  const left = new Map();
  const staging = new Map(); // tag -> {a0, size, buffer}
  for (const [a0, a1, buf, off, tag] of writes) {
    if (buf == null) staging.set(tag, { a0, size: a1 - a0, buffer: null });
    if (a0 % 4 || a1 % 4 || off % 4 || a0 < r0) throw new Error(`unaligned write ${a0}-${a1} -> ${off}`);
    left.set(tag, (left.get(tag) || 0) + (a1 - a0));
    for (let k = Math.floor((a0 - r0) / block); k < nblocks && r0 + k * block < a1; k++) {
      const bs = r0 + k * block;
      const s = Math.max(a0, bs), e = k === nblocks - 1 ? a1 : Math.min(a1, bs + block);
      if (e > s) pieces[k].push([s, e, buf, off + (s - a0), tag]);
    }
  }
  const needed = [];
  for (let k = 0; k < nblocks; k++) if (pieces[k].length) needed.push(k);
  const total = needed.reduce((t, k) => t + Math.min(block, size - (r0 + k * block)), 0);
  const cache = useCache ? await openCache() : null;
  let cached = false;
  if (cache) {
    const m = await cache.match(keyFor(url, "complete"));
    const meta = m ? await m.json() : null;
    cached = !!meta && meta.ident === ident;
    if (!cached) await dropStale(cache, url, ident);
  }
  const t0 = early?.t0 ?? performance.now(); // the download's start: its first blocks may have come early
  let loaded = 0, fromCache = 0;
  const report = () => {
    const s = (performance.now() - t0) / 1000;
    onProgress?.({ phase: "weights", loaded, total, mbps: s > 0 ? loaded / 1e6 / s : 0, fromCache: fromCache > 0 });
  };
  let lastReport = 0;
  const onBytes = (n) => {
    loaded += n;
    const now = performance.now();
    if (now - lastReport > 100) { lastReport = now; report(); }
  };
  let cacheOk = !!cache;
  // The block's bytes land in `into`: a staging buffer's mapped range, or plain memory written with
  // writeBuffer where a mapped buffer cannot be made (the device refused its size).
  const stage = (n) => {
    try {
      const buf = device.createBuffer({ size: n, usage: GPUBufferUsage.MAP_WRITE | GPUBufferUsage.COPY_SRC, mappedAtCreation: true, label: "load staging" });
      return { buf, into: new Uint8Array(buf.getMappedRange()) };
    } catch {
      return { buf: null, into: new Uint8Array(n) };
    }
  };
  const own = !early && !cached && needed.length > 1 && typeof Worker === "function";
  const pool = early?.pool ?? (own ? fetchPool(workerCount(urls.length)) : null);
  if (early) loaded += early.take(onBytes);
  const doBlock = async (k) => {
    const bs = r0 + k * block, be = Math.min(size, bs + block);
    const key = keyFor(url, `${ident}&block=${k}&of=${block}`);
    // writes may pass the file's end by up to 3 bytes: the staging is zero there
    const span = Math.max(be - bs, ...pieces[k].map(([, e]) => e - bs));
    const first = early?.blocks.get(k);
    if (first) early.blocks.delete(k);
    const hit = cache && !first ? await cache.match(key) : null;
    let got = hit ? new Uint8Array(await hit.arrayBuffer()) : null;
    const fromHit = got?.length === be - bs;
    if (fromHit) {
      fromCache += got.length;
      onBytes(got.length);
    } else {
      got = null;
    }
    // a download worker's block arrives whole and is copied into the staging made for it then; a block
    // fetched here is read straight into its staging
    if (first) got = await first;
    else if (!got && pool) got = await pool.get(urlOf(k), bs, be, onBytes, signal, size);
    const st = stage(span + (-span & 3));
    try {
      const data = st.into.subarray(0, be - bs);
      if (got) data.set(got);
      else await readBody(await rangeFetch(urlOf(k), bs, be, signal, size), data, onBytes, signal);
      if (!fromHit && cacheOk) {
        try { await cache.put(key, new Response(got ?? data.slice())); } catch (e) { cacheOk = false; console.warn("model cache disabled:", e.message); }
      }
      if (signal?.aborted) throw new LoadError("aborted", "Loading was cancelled.");
      if (st.buf) st.buf.unmap();
      const enc = st.buf ? device.createCommandEncoder({ label: "load copies" }) : null;
      const done = [];
      for (const [s, e, buf, off, tag] of pieces[k]) {
        let dst = buf, at = off;
        const tgt = staging.get(tag);
        if (tgt) {
          tgt.buffer ??= device.createBuffer({ size: tgt.size, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST, label: `staging ${tag}` });
          dst = tgt.buffer;
          at = s - tgt.a0;
        }
        if (enc) enc.copyBufferToBuffer(st.buf, s - bs, dst, at, e - s);
        else device.queue.writeBuffer(dst, at, st.into.buffer, st.into.byteOffset + (s - bs), e - s);
        const rest = left.get(tag) - (e - s);
        left.set(tag, rest);
        if (rest === 0) done.push([tag, tgt]);
      }
      if (enc) device.queue.submit([enc.finish()]);
      for (const [tag, tgt] of done) { // after the copies are queued: the caller's kernels read them
        onWriteDone?.(tag, tgt ? tgt.buffer : null);
        if (tgt) staging.delete(tag);
      }
    } finally {
      st.buf?.destroy(); // freed once the queued copies have run
    }
  };
  let next = 0;
  const worker = async () => { while (next < needed.length) await doBlock(needed[next++]); };
  const inFlight = pool?.workers ? pool.workers * PER_WORKER : IN_FLIGHT;
  try {
    await Promise.all(Array.from({ length: Math.min(inFlight, needed.length) }, worker));
  } finally {
    pool?.close();
    for (const st of staging.values()) st.buffer?.destroy(); // an aborted load frees what it staged
  }
  report();
  if (cache && cacheOk && !cached) {
    // The completion marker goes in last: an interrupted load never looks complete.
    const meta = { url, ident, size, blocks: needed.length, time: Date.now() };
    try { await cache.put(keyFor(url, "complete"), new Response(JSON.stringify(meta))); } catch {}
  }
  return { total, fetched: total - fromCache, fromCache, seconds: (performance.now() - t0) / 1000, workers: pool?.workers ?? 0 };
}
