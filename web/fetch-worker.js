// A download worker of the model loader (loader.js, fetchPool): it fetches each block it is sent with a
// Range request, checked as the loader checks its own (rangeFetch, download), into a new buffer that it
// hands back without a copy. Chromium moved 0.6 GB/s through the fetches of one thread and 1.1-1.4 GB/s
// through those of four to eight (an H200 host, bench/RESULTS.md), so the loader spreads its blocks.
// Messages in: {id, url, start, end, size} or {abort: id}; out: {id, bytes} (progress), then {id, done: buffer}
// or {id, error: {kind, message}}.
import { download, rangeFetch } from "./ranges.js";

const jobs = new Map(); // id -> AbortController

self.onmessage = async ({ data }) => {
  if (data.abort != null) { jobs.get(data.abort)?.abort(); return; }
  const { id, url, start, end, size } = data;
  const ctrl = new AbortController();
  jobs.set(id, ctrl);
  let pending = 0, last = 0;
  const onBytes = (n) => {
    pending += n;
    const now = performance.now();
    if (now - last > 50) { last = now; self.postMessage({ id, bytes: pending }); pending = 0; }
  };
  try {
    const into = await download(await rangeFetch(url, start, end, ctrl.signal, size), end - start, onBytes, ctrl.signal);
    self.postMessage({ id, bytes: pending, done: into.buffer }, [into.buffer]);
  } catch (e) {
    self.postMessage({ id, error: { kind: e.kind || "network", message: e.message || String(e) } });
  } finally {
    jobs.delete(id);
  }
};
