// State files in the browser: engine.loadState(url) starts every reset from a tuned state (a .st or a .pth with
// blocks.N.att.time_state), and the greedy ids are the native engine's from the same state
// (tests/golden/browser_greedy.json "state_cases", tools/make_browser_golden.py); loadState(null) goes back.
const { test, expect } = require('@playwright/test');
const fs = require('fs');
const path = require('path');
const { execFileSync } = require('child_process');
const { hostModels, golden, url, startEngine, generateIds, GOLDEN } = require('./models');

const cases = JSON.parse(fs.readFileSync(path.join(GOLDEN, 'browser_greedy.json'), 'utf8')).state_cases;

test.describe.configure({ mode: 'serial' });

let page;
const log = [];
const files = {};
for (const c of cases) { files[c.model] = golden(c.model); files[c.state] = golden(c.state); }

// a state for a 3-layer model: made here, like a user's state file for another model
function misfit() {
  const out = path.join(__dirname, '..', '..', 'test-results', 'e2e-3-layers-state.st');
  fs.mkdirSync(path.dirname(out), { recursive: true });
  execFileSync(path.join(__dirname, '..', '..', '.venv', 'bin', 'python'), ['-c', `
import sys, numpy as np
from webrwkv.safetensors import write_safetensors
write_safetensors(sys.argv[1], {f"blocks.{i}.att.time_state": np.ones((2, 32, 32), np.float32) for i in range(3)})
`, out]);
  return { data: fs.readFileSync(out) };
}

// a state-tuned checkpoint: the v6 golden weights in the official layout with v6-state.st's time_state in them
function tunedCheckpoint() {
  const out = path.join(__dirname, '..', '..', 'test-results', 'e2e-v6-tuned.st');
  execFileSync(path.join(__dirname, '..', '..', '.venv', 'bin', 'python'), ['-c', `
import sys
from webrwkv.models import load_weights
from webrwkv.models.loader import to_layout
from webrwkv.safetensors import read_header, read_tensor, write_safetensors
from webrwkv.sources import open_source
info, w = load_weights(sys.argv[1])
with open_source(sys.argv[2]) as src:
    ts = {n: read_tensor(src, t) for n, t in read_header(src).tensors.items()}
write_safetensors(sys.argv[3], {**to_layout(info, w, "official"), **ts}, dtype="fp32")
`, path.join(GOLDEN, 'v6-converted.st'), path.join(GOLDEN, 'v6-state.st'), out]);
  return { data: fs.readFileSync(out) };
}

test.beforeAll(async ({ browser }) => {
  page = await browser.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.log(`[browser] ${m.text()}`); });
  files['misfit.st'] = misfit();
  files['v6-tuned.st'] = tunedCheckpoint();
  await hostModels(page, files, log);
  await page.goto('/');
});

test.afterAll(async () => { await page?.close(); });

const greedy = async (c) => (await generateIds(page, c.prompt_ids, { maxTokens: c.max_tokens, temperature: 0, ignoreEos: true })).ids;

test('loadState: the native ids from a state file, after every reset, and back with loadState(null)', async ({ baseURL }) => {
  const c = cases.find((k) => k.state === 'v6-state.st');
  await startEngine(page, url(baseURL, c.model));
  const res = await page.evaluate((u) => window.__engine.loadState(u), url(baseURL, c.state));
  expect(res).toEqual({ name: 'v6-state.st', layers: 2 });
  expect(await greedy(c)).toEqual(c.ids);
  await page.evaluate(() => window.__engine.reset());
  expect(await greedy(c), 'reset returns to the loaded state').toEqual(c.ids);
  await page.evaluate(() => window.__engine.loadState(null));
  expect(await greedy(c)).toEqual(c.ids_without_state);
});

test('a .pth state file and a v7 state give the native ids too', async ({ baseURL }) => {
  for (const state of ['v6-state.pth', 'v7-state.st']) {
    const c = cases.find((k) => k.state === state);
    await page.evaluate((u) => window.__engine.load(u), url(baseURL, c.model));
    await page.evaluate((u) => window.__engine.loadState(u), url(baseURL, c.state));
    expect(await greedy(c), state).toEqual(c.ids);
  }
});

test('a state for another model is refused with the reason and changes nothing', async ({ baseURL }) => {
  const c = cases.find((k) => k.state === 'v7-state.st'); // loaded by the previous test
  const err = await page.evaluate(async (u) => {
    try { await window.__engine.loadState(u); return null; } catch (e) { return { kind: e.kind, message: e.message }; }
  }, url(baseURL, 'misfit.st'));
  expect(err).not.toBeNull();
  expect(err.kind).toBe('badfile');
  expect(err.message).toMatch(/3 layers \(0-2\), this model has 2/);
  const missing = await page.evaluate(async (u) => {
    try { await window.__engine.loadState(u); return null; } catch (e) { return e.kind; }
  }, url(baseURL, 'none.st'));
  expect(missing).toBe('network');
  await page.evaluate(() => window.__engine.reset());
  expect(await greedy(c)).toEqual(c.ids);
});

test('a state-tuned checkpoint streams in with its own state: the ids of its state file, natively', async ({ baseURL }) => {
  const c = cases.find((k) => k.state === 'v6-state.st');
  await page.evaluate((u) => window.__engine.load(u), url(baseURL, 'v6-tuned.st'));
  expect(await greedy(c)).toEqual(c.ids);
  await page.evaluate(() => window.__engine.reset());
  expect(await greedy(c), 'reset returns to the checkpoint state').toEqual(c.ids);
  // another state that fits (v7-state.st has v6's shapes here) takes over: other ids
  await page.evaluate((u) => window.__engine.loadState(u), url(baseURL, 'v7-state.st'));
  expect(await greedy(c), 'another state file over it').not.toEqual(c.ids);
  await page.evaluate(() => window.__engine.loadState(null));
  expect(await greedy(c), 'loadState(null): the checkpoint state again').toEqual(c.ids);
});
