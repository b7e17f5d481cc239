// The browser engine through the embedding API (web/webrwkv.js): Range streaming, memory,
// greedy equality with the native backend, stop, and regenerate from a saved state.
const { test, expect } = require('@playwright/test');
const fs = require('fs');
const path = require('path');
const { hostModels, golden, url, bigModel, startEngine, generateIds, GOLDEN } = require('./models');

const greedyGolden = JSON.parse(fs.readFileSync(path.join(GOLDEN, 'browser_greedy.json'), 'utf8'));

test.describe.configure({ mode: 'serial' });

let page;
const log = [];
const files = {};
for (const c of greedyGolden.cases) if (!c.bundled) files[c.model] = golden(c.model);

test.beforeAll(async ({ browser }) => {
  page = await browser.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.log(`[browser] ${m.text()}`); });
  await hostModels(page, files, log);
  await page.goto('/');
  await startEngine(page, null);
});

test.afterAll(async () => { await page?.close(); });

test('Range streaming: weights come only from 206 Range responses, about the file size in all', async ({ baseURL }) => {
  const name = 'v7.st';
  log.length = 0;
  const info = await page.evaluate(async (u) => {
    window.__progress = [];
    return window.__engine.load(u, { onProgress: (p) => window.__progress.push(p) });
  }, url(baseURL, name));
  expect(info.version).toBe('v7');
  const model = log.filter((e) => e.name === name);
  expect(model.length).toBeGreaterThanOrEqual(2); // the header, then the tensor data
  for (const e of model) {
    expect(e.range, 'every request for the model is a Range request').toMatch(/^bytes=\d+-\d+$/);
    expect(e.status).toBe(206);
  }
  const size = files[name].data.length;
  const fetched = model.reduce((t, e) => t + e.bytes, 0);
  expect(fetched).toBeGreaterThanOrEqual(size * 0.9);
  expect(fetched).toBeLessThanOrEqual(size + 4096); // the first request may overlap the data by < 4 KB
  const progress = await page.evaluate(() => window.__progress.filter((p) => p.phase === 'weights'));
  const last = progress.at(-1);
  expect(last.loaded).toBe(last.total);
  expect(last.mbps).toBeGreaterThan(0);
});

for (const c of greedyGolden.cases) {
  test(`Browser = native: greedy ids of ${c.model}`, async ({ baseURL }) => {
    let modelUrl = url(baseURL, c.model);
    if (c.bundled) { // the bundled model from the real server, prompted with text through its own vocabulary
      const served = (await (await page.request.get(`${baseURL}/models/index.json`)).json()).models;
      const entry = served.find((m) => m.name === c.model);
      expect(entry, 'the bundled model is served').toBeTruthy();
      expect(entry.size, 'bundled model changed: rerun tools/make_browser_golden.py').toBe(c.size);
      modelUrl = `${baseURL}/models/${c.model}`;
    }
    await page.evaluate((u) => window.__engine.load(u), modelUrl);
    await page.evaluate(() => window.__engine.reset());
    const prompt = c.bundled ? c.prompt : c.prompt_ids;
    const { ids, stats } = await generateIds(page, prompt, { maxTokens: c.max_tokens, temperature: 0, ignoreEos: true });
    expect(ids).toEqual(c.ids);
    expect(stats.decode_tps).toBeGreaterThan(0);
    // Python's share of a decode step, measured by the engine (reported, not timed)
    expect(stats.py_share).toBeGreaterThan(0);
    expect(stats.py_share).toBeLessThan(1);
    // O(1) Python->JS calls per decode step: meta write, one encode of the whole step, the logits read, the token
    expect(stats.js_calls_per_step).toBeLessThanOrEqual(5);
    console.log(`${c.model}: decode ${stats.decode_tps.toFixed(1)} tok/s, Python ${(100 * stats.py_share).toFixed(1)}% ` +
      `(${(1000 * stats.py_step_s).toFixed(2)} ms/step), ${stats.js_calls_per_step} JS calls/step on ${stats.adapter}`);
  });
}

test('Stop mid-generation ends the stream early', async () => {
  const r = await page.evaluate(async () => {
    const e = window.__engine;
    await e.reset();
    const ids = [];
    for await (const t of e.generate([1, 2, 3], { maxTokens: 500, temperature: 1.0, topP: 1, seed: 1, ignoreEos: true })) {
      ids.push(t.token);
      if (ids.length === 3) e.stop();
    }
    return { n: ids.length, stats: e.stats };
  });
  expect(r.n).toBeGreaterThanOrEqual(3);
  expect(r.n).toBeLessThan(10);
  expect(r.stats.stop_reason).toBe('stopped');
});

test('Regenerate at temperature 0 from the saved state gives the same reply', async ({ baseURL }) => {
  const r = await page.evaluate(async (u) => {
    const e = window.__engine;
    await e.load(u);
    const run = async () => {
      const ids = [];
      for await (const t of e.generate([5, 6, 7], { maxTokens: 8, temperature: 0 })) ids.push(t.token);
      return ids;
    };
    await e.reset();
    for await (const t of e.generate([9, 10, 11, 12], { maxTokens: 4, temperature: 0 })) void t;
    await e.saveState('turn');
    const first = await run();
    const carriedOn = await run(); // continues from a different state
    await e.restoreState('turn');
    const again = await run();
    return { first, again, carriedOn };
  }, url(baseURL, 'v7.st'));
  expect(r.again).toEqual(r.first);
  expect(r.carriedOn).not.toEqual(r.first);
});

test('Heap: the Pyodide heap grows by less than half the model size while loading', async ({ baseURL }) => {
  files['big-v7.st'] = bigModel();
  const size = files['big-v7.st'].data.length;
  const load = await page.evaluate(async (u) => (await window.__engine.load(u)).load, url(baseURL, 'big-v7.st'));
  console.log(`heap grew ${(load.heapGrowth / 1e6).toFixed(1)} MB, Python allocations peaked at ` +
    `${(load.pyPeak / 1e6).toFixed(2)} MB, loading a ${(size / 1e6).toFixed(1)} MB model`);
  expect(load.total).toBeGreaterThan(size * 0.95);
  expect(load.heapGrowth).toBeLessThan(size / 2); // the wasm memory
  expect(load.pyPeak).toBeGreaterThan(0); // tracing works: the header, vectors and plan are Python objects
  expect(load.pyPeak).toBeLessThan(size / 2); // ... but no tensor data
});
