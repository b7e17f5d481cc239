// Official-style .pth checkpoints (torch.save zips) streamed straight from their URL: the index from a few
// Range requests (start, zip tail, pickle), the weights like a .st's, and the same greedy ids the native
// engine gives for the safetensors twin (tests/golden/browser_greedy.json).
const { test, expect } = require('@playwright/test');
const fs = require('fs');
const path = require('path');
const { execFileSync } = require('child_process');
const { hostModels, golden, url, startEngine, generateIds, GOLDEN, PREFIX } = require('./models');
const { loadViaUi } = require('./ui');

const greedyGolden = JSON.parse(fs.readFileSync(path.join(GOLDEN, 'browser_greedy.json'), 'utf8'));
const TWINS = { 'v7.pth': 'v7.st', 'v6-bf16.pth': 'v6-bf16.st' };

test.describe.configure({ mode: 'serial' });

let page;
const log = [];
const files = Object.fromEntries(Object.keys(TWINS).map((n) => [n, golden(n)]));

test.beforeAll(async ({ browser }) => {
  page = await browser.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.log(`[browser] ${m.text()}`); });
  await hostModels(page, files, log);
  await page.goto('/');
});

// the first model through createEngine({ model }), the others through engine.load(url)
let started = false;
const load = async (u) => {
  if (started) return page.evaluate((m) => window.__engine.load(m), u);
  started = true;
  return startEngine(page, u);
};

test.afterAll(async () => { await page?.close(); });

for (const [name, twin] of Object.entries(TWINS)) {
  test(`${name} streams by Range from its URL and generates what native does for ${twin}`, async ({ baseURL }) => {
    log.length = 0;
    const info = await load(url(baseURL, name));
    expect(info.version).toBe(twin.slice(0, 2));
    const model = log.filter((e) => e.name === name);
    for (const e of model) {
      expect(e.range, 'every request for the model is a Range request').toMatch(/^bytes=(\d+-\d+|-\d+)$/);
      expect(e.status).toBe(206);
    }
    const size = files[name].data.length;
    const fetched = model.reduce((t, e) => t + e.bytes, 0);
    expect(fetched).toBeGreaterThanOrEqual(size * 0.9);
    expect(fetched).toBeLessThanOrEqual(size + 300_000); // the index: 4 KB, the <= 256 KB tail, the pickle
    const weights = Math.ceil(size / (32 << 20));
    expect(model.length, 'index in 3 requests, then the weight blocks').toBeLessThanOrEqual(3 + weights);
    const c = greedyGolden.cases.find((k) => k.model === twin);
    await page.evaluate(() => window.__engine.reset());
    const { ids } = await generateIds(page, c.prompt_ids, { maxTokens: c.max_tokens, temperature: 0, ignoreEos: true });
    expect(ids).toEqual(c.ids);
  });
}

test('a .pth whose server hides its size (no Content-Range exposed) loads from the zip end records', async ({ baseURL }) => {
  const data = files['v7.pth'].data;
  await page.route(`**${PREFIX}hidden/v7.pth`, async (route) => {
    const range = route.request().headers()['range'] || '';
    const headers = { 'Access-Control-Allow-Origin': '*', 'Content-Type': 'application/octet-stream' };
    let m = /^bytes=(\d+)-(\d+)$/.exec(range), body;
    if (m) body = data.subarray(Number(m[1]), Math.min(Number(m[2]) + 1, data.length));
    else if ((m = /^bytes=-(\d+)$/.exec(range))) body = data.subarray(Math.max(0, data.length - Number(m[1])));
    else return route.fulfill({ status: 200, headers, body: data });
    return route.fulfill({ status: 206, headers, body }); // Content-Range is not exposed to the page
  });
  const info = await load(`${baseURL}${PREFIX}hidden/v7.pth`);
  expect(info.version).toBe('v7');
  await page.evaluate(() => window.__engine.reset());
  const c = greedyGolden.cases.find((k) => k.model === 'v7.st');
  const { ids } = await generateIds(page, c.prompt_ids, { maxTokens: c.max_tokens, temperature: 0, ignoreEos: true });
  expect(ids).toEqual(c.ids);
});

test('a .pth that runs code is refused with the reason, before any download', async ({ baseURL }) => {
  // os.system("true") pickled in place of data.pkl: the page must say what it found, not run it
  const out = path.join(__dirname, '..', '..', 'test-results', 'e2e-evil.pth');
  fs.mkdirSync(path.dirname(out), { recursive: true });
  execFileSync(path.join(__dirname, '..', '..', '.venv', 'bin', 'python'), ['-c', `
import os, pickle, sys, zipfile
class Call:
    def __reduce__(self):
        return (os.system, ("true",))
with zipfile.ZipFile(sys.argv[1]) as zin, zipfile.ZipFile(sys.argv[2], "w") as zout:
    for i in zin.infolist():
        evil = i.filename.endswith("/data.pkl")
        zout.writestr(i.filename, pickle.dumps({"emb.weight": Call()}, 2) if evil else zin.read(i))
`, path.join(GOLDEN, 'v4.pth'), out]);
  const evil = fs.readFileSync(out);
  await hostModels(page, { 'evil.pth': { data: evil } }, log);
  log.length = 0;
  const err = await page.evaluate(async (u) => {
    try { await window.__engine.load(u); return null; } catch (e) { return { kind: e.kind, message: e.message }; }
  }, url(baseURL, 'evil.pth'));
  expect(err).not.toBeNull();
  expect(err.kind).toBe('badfile');
  expect(err.message).toMatch(/system.*never runs code/);
  const fetched = log.filter((e) => e.name === 'evil.pth').reduce((t, e) => t + e.bytes, 0);
  expect(fetched, 'only the index was fetched').toBeLessThan(4096 + (256 << 10) + 8192);
  expect(fetched).toBeLessThan(evil.length * 0.6);
});

test('the chat page lists official .pth checkpoints and loads a .pth URL pasted in its field', async ({ baseURL }) => {
  const urls = await page.$$eval('#model-pick option', (os) => os.map((o) => o.value));
  const official = urls.filter((u) => /^https:\/\/huggingface\.co\/BlinkDL\/[\w.-]+\/resolve\/main\/[\w.-]+\.pth$/.test(u));
  expect(official.length).toBeGreaterThanOrEqual(3);
  expect(urls.some((u) => /^https:\/\/huggingface\.co\/.+\/resolve\/main\/.+\.st$/.test(u))).toBe(true);
  await hostModels(page, { 'v4-fp16.pth': golden('v4-fp16.pth') }, log);
  await loadViaUi(page, url(baseURL, 'v4-fp16.pth'));
  await expect(page.locator('#model-info')).toContainText('v4');
});
