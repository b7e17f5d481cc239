// Quantization on load in the browser: the streamed fp16 rows of every layer matrix are quantized on
// the GPU (int8 / NF4) and the greedy ids equal the native runtime's with the same quantization
// (tests/golden/browser_quant_greedy.json, made by tools/make_browser_quant_golden.py).
const { test, expect } = require('@playwright/test');
const fs = require('fs');
const path = require('path');
const { hostModels, golden, url, startEngine, generateIds, GOLDEN } = require('./models');
const { loadViaUi } = require('./ui');

const quantGolden = JSON.parse(fs.readFileSync(path.join(GOLDEN, 'browser_quant_greedy.json'), 'utf8'));

test.describe.configure({ mode: 'serial' });

let page;
const files = {};
for (const c of quantGolden.cases) files[c.model] = golden(c.model);
const fp16Bytes = {};

test.beforeAll(async ({ browser }) => {
  page = await browser.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.log(`[browser] ${m.text()}`); });
  await hostModels(page, files);
  await page.goto('/');
  await startEngine(page, null);
});

test.afterAll(async () => { await page?.close(); });

const load = (u, quant) => page.evaluate(([u, q]) => window.__engine.load(u, q ? { quant: q } : {}), [u, quant]);

for (const c of quantGolden.cases) {
  test(`Browser = native with ${c.quant} weights: greedy ids of ${c.model}`, async ({ baseURL }) => {
    if (!fp16Bytes[c.model]) fp16Bytes[c.model] = (await load(url(baseURL, c.model))).weight_bytes;
    const info = await load(url(baseURL, c.model), c.quant);
    expect(info.quant).toBe(c.quant);
    // the layers' matrices really are stored quantized (embedding and head stay fp16)
    expect(info.weight_bytes).toBeLessThan(fp16Bytes[c.model] * (c.quant === 'int8' ? 0.95 : 0.9));
    await page.evaluate(() => window.__engine.reset());
    const { ids } = await generateIds(page, c.prompt_ids, { maxTokens: c.max_tokens, temperature: 0, ignoreEos: true });
    expect(ids).toEqual(c.ids);
  });
}

test('An unknown quantization is refused with a message that says what to use', async ({ baseURL }) => {
  const c = quantGolden.cases[0];
  const err = await page.evaluate(async (u) => {
    try { await window.__engine.load(u, { quant: 'int3' }); return null; } catch (e) { return { kind: e.kind, message: e.message }; }
  }, url(baseURL, c.model));
  expect(err).not.toBeNull();
  expect(err.message).toMatch(/int8|nf4/);
});

test('The chat page loads the model with the weights chosen in its select', async ({ baseURL }) => {
  await page.selectOption('#quant', 'nf4');
  await loadViaUi(page, url(baseURL, 'v7.st'));
  await expect(page.locator('#model-info')).toContainText('nf4 weights');
});
