// `webrwkv bundle` served by nginx (no webrwkv process involved) under a sub-path: the page loads the
// bundled model and generates what the native engine does; a page of another origin embeds the engine
// straight from the bundle (module worker refused cross-origin: a blob worker imports it), and a page
// with its own copy of webrwkv.js points `baseUrl` at the bundle.
const { test, expect } = require('@playwright/test');
const fs = require('fs');
const path = require('path');
const { bundle, startNginx, ROOT } = require('./nginx');

const PORT = Number(process.env.E2E_PORT || 8766) + 40; // the bundle's host
const OTHER = PORT + 1;                                   // another origin, embedding the engine
const OUT = path.join(ROOT, 'test-results', 'bundle');
const SITE = path.join(ROOT, 'test-results', 'embedder');
const cases = JSON.parse(fs.readFileSync(path.join(ROOT, 'tests', 'golden', 'browser_greedy.json'), 'utf8')).cases;
const shakespeare = cases.find((c) => c.bundled);
const tiny = cases.find((c) => c.model === 'v7.st');
const BASE = `http://127.0.0.1:${PORT}/demo/`;

test.describe.configure({ mode: 'serial' });
let nginx;

test.beforeAll(async () => {
  bundle(OUT, [path.join(ROOT, 'models', 'rwkv7-shakespeare.st'), path.join(ROOT, 'tests', 'golden', 'v7.st')]);
  fs.rmSync(SITE, { recursive: true, force: true });
  fs.mkdirSync(path.join(SITE, 'lib'), { recursive: true });
  for (const f of ['webrwkv.js', 'loader.js', 'ranges.js']) fs.copyFileSync(path.join(OUT, f), path.join(SITE, 'lib', f));
  fs.writeFileSync(path.join(SITE, 'index.html'), '<!doctype html><meta charset="utf-8"><title>embedder</title><p>another site</p>');
  nginx = await startNginx('bundle', [
    { port: PORT, locations: [{ prefix: '/demo/', dir: OUT, cors: true }] },
    { port: OTHER, locations: [{ prefix: '/', dir: SITE, cors: false }] },
  ]);
});
test.afterAll(async () => { await nginx?.stop(); });

test('The bundle under /demo/ on nginx: the page loads the bundled model and generates like the native engine', async ({ page }) => {
  test.setTimeout(600_000); // the bundled model on SwiftShader: generous on a busy machine
  const elsewhere = [];
  page.on('request', (r) => { if (!r.url().startsWith(BASE) && !r.url().startsWith('data:') && !r.url().startsWith('blob:')) elsewhere.push(r.url()); });
  await page.goto(BASE);
  await expect(page.locator('#model-pick option').first()).toHaveText(/RWKV-7 Shakespeare 7.5M \(15\.0 MB\)/);
  await expect(page.locator('#play-view')).toBeVisible(); // a completion model opens in the playground
  await page.click('#load');
  await expect(page.locator('#model-chip')).toHaveClass(/ok/, { timeout: 240_000 });
  const ids = await page.evaluate(async (c) => {
    const e = window.webrwkvApp.engine;
    await e.reset();
    const out = [];
    for await (const t of e.generate(c.prompt, { maxTokens: c.max_tokens, temperature: 0, ignoreEos: true })) out.push(t.token);
    return out;
  }, shakespeare);
  expect(ids).toEqual(shakespeare.ids);
  expect(elsewhere).toEqual([]);
  expect(nginx.accessLog()).toMatch(/"GET \/demo\/models\/rwkv7-shakespeare.st HTTP\/1.1" 206/);
});

test('Another origin embeds the engine from the bundle, and a copy of webrwkv.js uses baseUrl', async ({ page }) => {
  await page.goto(`http://localhost:${OTHER}/`); // localhost:OTHER is another origin than 127.0.0.1:PORT
  const r = await page.evaluate(async ([base, tiny]) => {
    const greedy = async (engine, prompt, n) => {
      await engine.reset();
      const ids = [];
      for await (const t of engine.generate(prompt, { maxTokens: n, temperature: 0, ignoreEos: true })) ids.push(t.token);
      return ids;
    };
    const remote = await import(`${base}webrwkv.js`);
    const a = await remote.createEngine({ model: `${base}models/v7.st` });
    const viaImport = await greedy(a, tiny.prompt_ids, tiny.max_tokens);
    a.dispose();
    const local = await import('/lib/webrwkv.js');
    const b = await local.createEngine({ baseUrl: base, model: `${base}models/v7.st` });
    const viaBase = await greedy(b, tiny.prompt_ids, tiny.max_tokens);
    b.dispose();
    return { viaImport, viaBase, origin: location.origin };
  }, [BASE, tiny]);
  expect(r.origin).toBe(`http://localhost:${OTHER}`);
  expect(r.viaImport).toEqual(tiny.ids);
  expect(r.viaBase).toEqual(tiny.ids);
});
