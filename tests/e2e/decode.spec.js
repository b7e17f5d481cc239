// Decoding in the browser with the tokens picked on the GPU: the same sampled ids as the native CLI for a
// seed (`webrwkv generate --json`), a stop string met inside a decode window, and flat Pyodide / JS heaps
// over 2,000 generated tokens.
const { test, expect } = require('@playwright/test');
const fs = require('fs');
const path = require('path');
const { execFileSync } = require('child_process');
const { hostModels, golden, url, startEngine, GOLDEN } = require('./models');

const ROOT = path.join(__dirname, '..', '..');
const PY = path.join(ROOT, '.venv', 'bin', 'python');
// the golden v7 model with a vocabulary of its own (id i is byte i), so text prompts work on both sides
const DIR = path.join(ROOT, 'test-results', 'decode-model');
const VOCAB = Array.from({ length: 255 }, (_, i) => `${i + 1} ${pyBytes(i + 1)} 1`).join('\n') + '\n';

function pyBytes(b) {
  const c = String.fromCharCode(b);
  if (b === 0x27) return "b\"'\"";
  if (b === 0x5c) return "b'\\\\'";
  if (b >= 0x20 && b < 0x7f) return `b'${c}'`;
  return `b'\\x${b.toString(16).padStart(2, '0')}'`;
}

function modelFiles() {
  fs.mkdirSync(DIR, { recursive: true });
  fs.copyFileSync(path.join(GOLDEN, 'v7.st'), path.join(DIR, 'm.st'));
  fs.writeFileSync(path.join(DIR, 'm.vocab.txt'), VOCAB);
  return { 'm.st': golden('v7.st'), 'm.vocab.txt': { data: Buffer.from(VOCAB) } };
}

function nativeGenerate(args) {
  const out = execFileSync(PY, ['-m', 'webrwkv', 'generate', '--model', path.join(DIR, 'm.st'), '--json', ...args],
    { cwd: ROOT, encoding: 'utf8', timeout: 240_000 });
  return JSON.parse(out.trim().split('\n').pop());
}

test.describe.configure({ mode: 'serial' });
let page;
const files = modelFiles();

test.beforeAll(async ({ browser, baseURL }) => {
  page = await browser.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.log(`[browser] ${m.text()}`); });
  await hostModels(page, files);
  await page.goto('/');
  await startEngine(page, url(baseURL, 'm.st'));
});
test.afterAll(async () => { await page?.close(); });

const browserGenerate = (prompt, opts) => page.evaluate(async ([p, o]) => {
  const e = window.__engine;
  await e.reset();
  const ids = [];
  let text = '';
  for await (const t of e.generate(p, o)) { ids.push(t.token); text += t.text; }
  return { ids, text, stats: e.stats };
}, [prompt, opts]);

test('Native and browser give the same sampled tokens for a seed', async () => {
  const prompt = 'The quick brown fox';
  const native = nativeGenerate(['--prompt', prompt, '--temperature', '0.8', '--top-p', '0.9', '--seed', '7',
    '--max-tokens', '40']);
  const got = await browserGenerate(prompt, { temperature: 0.8, topP: 0.9, seed: 7, maxTokens: 40 });
  expect(native.ids.length).toBeGreaterThan(10);
  expect(got.ids).toEqual(native.ids);
  expect(got.stats.js_calls_per_step).toBeLessThanOrEqual(3); // a window is one call, its ids one read
  // penalties and top-k go the same way
  const args = ['--temperature', '1.2', '--top-k', '20', '--presence-penalty', '0.5', '--frequency-penalty', '0.3',
    '--seed', '3', '--max-tokens', '30'];
  const n2 = nativeGenerate(['--prompt', prompt, ...args]);
  const b2 = await browserGenerate(prompt, { temperature: 1.2, topK: 20, presencePenalty: 0.5, frequencyPenalty: 0.3,
    seed: 3, maxTokens: 30 });
  expect(b2.ids).toEqual(n2.ids);
});

test('A stop string met inside a decode window ends the text and the state where step-by-step decoding does', async () => {
  const full = await browserGenerate('abc', { temperature: 0, maxTokens: 24, ignoreEos: true });
  const stop = full.text.slice(9, 11); // ends around the tenth token: inside the 8-step window
  const native = nativeGenerate(['--prompt', 'abc', '--temperature', '0', '--max-tokens', '24', '--stop', stop]);
  const got = await browserGenerate('abc', { temperature: 0, maxTokens: 24, stop: [stop], ignoreEos: true });
  expect(got.stats.stop_reason).toBe('stop');
  expect(got.ids).toEqual(native.ids);
  expect(got.text).toBe(native.text);
  // the state read exactly the prompt and the ids but the last: continuing gives what one long run gives
  const cont = await page.evaluate(async () => {
    const ids = [];
    for await (const t of window.__engine.generate([], { temperature: 0, maxTokens: 5, ignoreEos: true })) ids.push(t.token);
    return ids;
  }).catch((e) => String(e));
  expect(Array.isArray(cont) ? cont.slice(0, 1) : cont).toEqual(full.ids.slice(got.ids.length, got.ids.length + 1));
});

// The JS heap of the engine's worker, after a garbage collection, through the DevTools protocol
// (performance.memory exists only on the page's own thread).
let cdpCall = null;
async function workerHeap() {
  if (!cdpCall) {
    const s = await page.context().newCDPSession(page);
    const pending = new Map();
    let n = 0;
    s.on('Target.receivedMessageFromTarget', (e) => {
      const m = JSON.parse(e.message);
      if (pending.has(m.id)) { pending.get(m.id)(m.result); pending.delete(m.id); }
    });
    const attached = new Promise((r) => s.on('Target.attachedToTarget', (e) => { if (e.targetInfo.type === 'worker') r(e.sessionId); }));
    await s.send('Target.setAutoAttach', { autoAttach: true, waitForDebuggerOnStart: false, flatten: false });
    const sessionId = await attached;
    cdpCall = (method) => new Promise((r) => {
      const id = ++n;
      pending.set(id, r);
      s.send('Target.sendMessageToTarget', { sessionId, message: JSON.stringify({ id, method, params: {} }) });
    });
  }
  await cdpCall('HeapProfiler.collectGarbage');
  return (await cdpCall('Runtime.getHeapUsage')).usedSize;
}

test('kernelTimes splits a step by kernel as natively, and the next generation is as before', async () => {
  const opts = { temperature: 0, maxTokens: 12 };
  const before = await browserGenerate('The quick brown fox', opts);
  // after a reset: the measurement leaves garbage in the state, so the engine must start over by itself
  const { got, ids } = await page.evaluate(async ([p, o]) => {
    const e = window.__engine;
    await e.reset();
    const kt = [await e.kernelTimes({ steps: 2 }), await e.kernelTimes({ prefill: 8, steps: 2 })];
    const out = [];
    for await (const t of e.generate(p, o)) out.push(t.token);
    return { got: kt, ids: out };
  }, ['The quick brown fox', opts]);
  const out = execFileSync(PY, [path.join(ROOT, 'bench', 'kernel_times.py'), '--model', path.join(DIR, 'm.st'),
    '--batch', '1', '--prefill', '8', '--steps', '2', '--json'], { cwd: ROOT, encoding: 'utf8', timeout: 240_000 });
  const native = JSON.parse(out.trim().split('\n').pop()).rows;
  const counts = (r) => Object.fromEntries(Object.entries(r.kernels).map(([k, v]) => [k, v.dispatches]));
  for (let i = 0; i < 2; i++) {
    expect(got[i].what).toBe(native[i].what);
    expect(counts(got[i])).toEqual(counts(native[i])); // the same kernels, each as many dispatches
    expect(Object.values(got[i].kernels).reduce((t, k) => t + k.dispatches, 0)).toBe(got[i].dispatches);
    expect(got[i].step_us).toBeGreaterThan(0);
  }
  expect(Object.keys(got[0].kernels)).toEqual(expect.arrayContaining(['sample', 'wkv7', 'mix', 'embed']));
  expect(ids).toEqual(before.ids);
});

test('The Pyodide and JS heaps stay flat over 2,000 generated tokens', async () => {
  test.setTimeout(900_000);
  const heaps = [];
  for (let round = 0; round < 5; round++) {
    const st = await page.evaluate(async (seed) => {
      const e = window.__engine;
      await e.reset();
      for await (const t of e.generate([1, 2, 3], { temperature: 1.0, topP: 0.9, seed, maxTokens: 400, ignoreEos: true })) void t;
      return e.refreshStats();
    }, round);
    const pageJs = await page.evaluate(() => performance.memory.usedJSHeapSize);
    heaps.push({ py: st.heapBytes, js: await workerHeap(), page: pageJs, n: st.completion_tokens });
  }
  const r = heaps;
  console.log('heaps after each 400 tokens:', JSON.stringify(r));
  expect(r.reduce((t, h) => t + h.n, 0)).toBe(2000);
  // after the first round (warm caches), no heap grows by more than 1 MB (Pyodide) / 4 MB (JS) over 1,600 more tokens
  expect(r.at(-1).py - r[0].py).toBeLessThanOrEqual(1 << 20);
  expect(r[0].js).toBeGreaterThan(0);
  expect(r.at(-1).js - r[0].js).toBeLessThanOrEqual(4 << 20);
  expect(r.at(-1).page - r[0].page).toBeLessThanOrEqual(4 << 20);
});
