// The loader's download workers (web/fetch-worker.js), as the engine runs them: streamWrites inside a
// module worker, which starts its own download workers. The bundled model is streamed in 1 MB blocks into
// a GPU buffer and read back against the file; a device with less memory gets fewer workers; a range past
// the end, a cancel and workers that cannot start end as they do without workers.
const { test, expect } = require('@playwright/test');

const FILE = '/models/rwkv7-shakespeare.st';

// Runs one streamWrites in a module worker of the page; resolves with its stats and whether the GPU
// buffer holds the file's bytes, or with the LoadError it raised.
async function stream(page, opts) {
  return page.evaluate(async ({ FILE, opts }) => {
    const src = `
      import { prefetch, streamWrites } from "${location.origin}/loader.js";
      self.onmessage = async ({ data: o }) => {
        // workers that cannot start: the constructor throws, or the worker reports an error once made
        // (as a missing or blocked script does)
        if (o.memory) Object.defineProperty(navigator, "deviceMemory", { value: o.memory }); // GB, as Chromium reports it
        if (o.broken === "throw") self.Worker = class { constructor() { throw new Error("no workers here"); } };
        if (o.broken === "error") {
          self.Worker = class {
            constructor() { setTimeout(() => this.onerror?.({ message: "blocked", preventDefault() {} }), 10); }
            postMessage() {}
            terminate() {}
          };
        }
        try {
          const a = await navigator.gpu.requestAdapter();
          const dev = await a.requestDevice();
          const file = new Uint8Array(await (await fetch(o.url, { cache: "no-store" })).arrayBuffer());
          const size = o.size ?? file.length, n = file.length - file.length % 4;
          const buf = dev.createBuffer({ size: n, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
          const ctrl = new AbortController();
          let progress = 0;
          const onProgress = (p) => { progress = Math.max(progress, p.loaded); if (o.abortAt && p.loaded >= o.abortAt) ctrl.abort(); };
          // o.early: the first blocks downloaded before the stream starts, as while a load is planned
          const early = o.early ? await prefetch({ url: o.url, mirrors: o.mirrors, size, ident: "download-test", dataStart: 0, signal: ctrl.signal,
            useCache: o.cache, block: o.earlyBlock ?? 1 << 20 }) : null;
          if (o.early) await new Promise((res) => setTimeout(res, 300));
          if (o.abortEarly) ctrl.abort();
          const r = await streamWrites({ url: o.url, mirrors: o.mirrors, device: dev, size, ident: "download-test", dataStart: 0,
            writes: [[0, n, buf, 0, 1]], onProgress, signal: ctrl.signal, useCache: o.cache, block: 1 << 20, early });
          r.early = early ? early.blocks.size === 0 : null; // every early block was taken
          const rd = dev.createBuffer({ size: n, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
          const enc = dev.createCommandEncoder();
          enc.copyBufferToBuffer(buf, 0, rd, 0, n);
          dev.queue.submit([enc.finish()]);
          await rd.mapAsync(GPUMapMode.READ);
          const got = new Uint8Array(rd.getMappedRange());
          let same = got.length === n;
          for (let i = 0; same && i < n; i++) same = got[i] === file[i];
          postMessage({ ...r, same, progress });
        } catch (e) {
          postMessage({ error: { name: e.name, kind: e.kind, message: e.message } });
        }
      };`;
    const w = new Worker(URL.createObjectURL(new Blob([src], { type: 'text/javascript' })), { type: 'module' });
    const out = await new Promise((res) => { w.onmessage = (e) => res(e.data); w.onerror = (e) => res({ error: { message: String(e.message) } }); w.postMessage({ url: location.origin + FILE, ...opts }); });
    w.terminate();
    return out;
  }, { FILE, opts });
}

test.describe.configure({ mode: 'serial' });

test.beforeEach(async ({ page }) => {
  await page.goto('/webrwkv.d.ts'); // any page of the origin: the test drives the loader itself
  await page.evaluate(() => caches.delete('webrwkv-models-v1'));
});

test('Download workers stream every block to the GPU, and the next load comes from the cache', async ({ page }) => {
  const first = await stream(page, { cache: true });
  expect(first.error).toBeUndefined();
  expect(first.workers).toBe(4);
  expect(first.same).toBe(true);
  expect(first.fetched).toBe(first.total);
  expect(first.progress).toBe(first.total);
  const again = await stream(page, { cache: true });
  expect(again).toMatchObject({ same: true, workers: 0, fetched: 0, fromCache: first.total });
});

test('A device that reports under 8 GB gets two download workers, not four', async ({ page }) => {
  const r = await stream(page, { cache: false, memory: 4 });
  expect(r).toMatchObject({ same: true, workers: 2 });
  expect(r.fetched).toBe(r.total);
});

test('A range past the end of the file and a cancel raise the loader\'s errors through the workers', async ({ page }) => {
  const past = await stream(page, { cache: false, size: 15012192 + (3 << 20) });
  expect(past.error).toMatchObject({ name: 'LoadError' });
  expect(past.error.message).toMatch(/is 15012192 bytes where the load expects 18157920/);
  const cancelled = await stream(page, { cache: false, abortAt: 2 << 20 });
  expect(cancelled.error).toMatchObject({ name: 'LoadError', kind: 'aborted' });
});

test('Where the download workers cannot start, the blocks are fetched in the loader\'s thread', async ({ page }) => {
  for (const broken of ['throw', 'error']) {
    const r = await stream(page, { cache: false, broken });
    expect(r.error, broken).toBeUndefined();
    expect(r, broken).toMatchObject({ same: true, workers: 0 });
    expect(r.fetched, broken).toBe(r.total);
  }
});

test('Blocks downloaded while the load is planned are the stream\'s first, counted once; none when the cache has the model', async ({ page }) => {
  const first = await stream(page, { cache: true, early: true });
  expect(first.error).toBeUndefined();
  expect(first).toMatchObject({ same: true, workers: 4, early: true });
  expect(first.fetched).toBe(first.total);
  expect(first.progress).toBe(first.total);
  const again = await stream(page, { cache: true, early: true });
  expect(again).toMatchObject({ same: true, workers: 0, fetched: 0, fromCache: first.total, early: null });
  const cancelled = await stream(page, { cache: false, early: true, abortEarly: true });
  expect(cancelled.error).toMatchObject({ name: 'LoadError', kind: 'aborted' });
  const other = await stream(page, { cache: false, early: true, earlyBlock: 2 << 20 });
  expect(other.error.message).toMatch(/another block grid/);
});

test('A body read into its own buffer: the exact bytes, and a clear error for a server that sends more or fewer', async ({ page }) => {
  // the lying server: /lie/more sends 8 bytes past the asked range, /lie/less 8 bytes short (a 206 each)
  const data = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 31) & 255));
  await page.route('**/lie/**', (route) => {
    const [, a, b] = /bytes=(\d+)-(\d+)/.exec(route.request().headers()['range']).map(Number);
    const extra = route.request().url().endsWith('more') ? 8 : route.request().url().endsWith('less') ? -8 : 0;
    route.fulfill({ status: 206, headers: { 'Content-Range': `bytes ${a}-${b}/${data.length}` }, body: data.subarray(a, b + 1 + extra) });
  });
  const out = await page.evaluate(async () => {
    const { download, rangeFetch, readBody } = await import(`${location.origin}/ranges.js`);
    const res = {};
    for (const kind of ['exact', 'more', 'less']) {
      for (const how of ['download', 'readBody']) {
        try {
          const r = await rangeFetch(`${location.origin}/lie/${kind}`, 100, 3100);
          let seen = 0;
          const got = how === 'download' ? await download(r, 3000, (n) => { seen += n; })
            : await readBody(r, new Uint8Array(3000), (n) => { seen += n; });
          res[`${kind}-${how}`] = { ok: got.every((v, i) => v === (((i + 100) * 31) & 255)), n: got.length, seen };
        } catch (e) { res[`${kind}-${how}`] = { error: e.name, kind: e.kind, message: e.message }; }
      }
    }
    return res;
  });
  for (const how of ['download', 'readBody']) {
    expect(out[`exact-${how}`]).toEqual({ ok: true, n: 3000, seen: 3000 });
    expect(out[`more-${how}`]).toMatchObject({ error: 'LoadError', kind: 'badfile', message: 'The server sent more bytes than asked for.' });
    expect(out[`less-${how}`]).toMatchObject({ error: 'LoadError', kind: 'network' });
    expect(out[`less-${how}`].message).toMatch(/sent 2992 of 3000 bytes/);
  }
});

test('Mirrors: the blocks alternate between the hosts and every byte lands; a mirror of another file fails clearly', async ({ page, baseURL }) => {
  const port = new URL(baseURL).port;
  const hosts = {};
  await page.route('**/models/rwkv7-shakespeare.st', (route) => {
    const h = new URL(route.request().url()).host;
    hosts[h] = (hosts[h] || 0) + 1;
    return route.fallback();
  });
  const mirror = `http://localhost:${port}${FILE}`;
  for (const early of [false, true]) {
    for (const k of Object.keys(hosts)) delete hosts[k];
    const r = await stream(page, { cache: false, early, mirrors: [mirror] });
    expect(r.error, `early ${early}`).toBeUndefined();
    expect(r).toMatchObject({ same: true, workers: 8 }); // 4 a host
    expect(r.fetched).toBe(r.total);
    // 15 blocks of 1 MB (one of them is the test's own whole-file fetch, from the page's host)
    expect(hosts).toEqual({ [`127.0.0.1:${port}`]: 9, [`localhost:${port}`]: 7 });
  }
  // a mirror whose file is 5 bytes longer: its first block's answer says so
  await page.route('**/other/rwkv7-shakespeare.st', async (route) => {
    const [, a, b] = /bytes=(\d+)-(\d+)/.exec(route.request().headers()['range']).map(Number);
    route.fulfill({ status: 206, headers: { 'Access-Control-Allow-Origin': '*', 'Access-Control-Expose-Headers': 'Content-Range',
      'Content-Range': `bytes ${a}-${b}/15012197` }, body: Buffer.alloc(b - a + 1) });
  });
  const longer = await stream(page, { cache: false, mirrors: [`http://localhost:${port}/other/rwkv7-shakespeare.st`] });
  expect(longer.error).toMatchObject({ name: 'LoadError', kind: 'badfile' });
  expect(longer.error.message).toContain('localhost:' + port + '/rwkv7-shakespeare.st is 15012197 bytes where the load expects 15012192');
  // the check before a load: each mirror must start with the model's first bytes
  const head = await page.evaluate(async ({ FILE, mirror, port }) => {
    const { checkMirrors } = await import(`${location.origin}/loader.js`);
    const head = new Uint8Array(await (await fetch(FILE, { headers: { Range: 'bytes=0-4095' } })).arrayBuffer());
    const out = {};
    for (const [name, m, h] of [['same', mirror, head], ['other', mirror, head.map((b, i) => (i === 4000 ? b ^ 1 : b))],
      ['gone', `http://localhost:${port}/models/none.st`, head]]) {
      try { await checkMirrors(location.origin + FILE, [m], h, 15012192); out[name] = 'ok'; } catch (e) { out[name] = { kind: e.kind, message: e.message }; }
    }
    return out;
  }, { FILE, mirror, port });
  expect(head.same).toBe('ok');
  expect(head.other).toEqual({ kind: 'badfile', message: `The mirror localhost:${port}/rwkv7-shakespeare.st does not hold the same file as ` +
    `127.0.0.1:${port}/rwkv7-shakespeare.st (their first 4096 bytes differ): every mirror must serve the same file.` });
  expect(head.gone).toMatchObject({ kind: 'http' });
  expect(head.gone.message).toContain('not found');
});

test('A server that answers another range than asked for fails the load, not gives wrong bytes', async ({ page }) => {
  await page.route('**/shifted/**', (route) => {
    const [, a, b] = /bytes=(\d+)-(\d+)/.exec(route.request().headers()['range']).map(Number);
    route.fulfill({ status: 206, headers: { 'Content-Range': `bytes ${a + 8}-${b + 8}/100000` }, body: Buffer.alloc(b - a + 1) });
  });
  const out = await page.evaluate(async () => {
    const { rangeFetch } = await import(`${location.origin}/ranges.js`);
    try { await rangeFetch(`${location.origin}/shifted/m.st`, 100, 3100); return 'ok'; } catch (e) { return { kind: e.kind, message: e.message }; }
  });
  expect(out).toEqual({ kind: 'badfile', message: 'The server of m.st answered bytes from 108 when asked for bytes from 100: it does ' +
    'not handle Range requests correctly.' });
});
