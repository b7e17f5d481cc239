// The model cache (Cache API): a reload needs no weight requests, a changed file is fetched
// again, an interrupted download never looks complete, and the page can clear the cache.
const { test, expect } = require('@playwright/test');
const { hostModels, golden, url } = require('./models');
const { loadViaUi } = require('./ui');

test.describe.configure({ mode: 'serial' });

let page;
const log = [];
const files = { 'm.st': golden('v7.st') };
const headerEnd = (buf) => 8 + Number(buf.readBigUInt64LE(0));
const bytesOf = (name) => log.filter((e) => e.name === name).reduce((t, e) => t + e.bytes, 0);
const weightRequests = (name) => log.filter((e) => e.name === name && Number(/bytes=(\d+)/.exec(e.range || '')?.[1] ?? 0) >= headerEnd(files[name].data));

test.beforeAll(async ({ browser }) => {
  page = await browser.newPage();
  await hostModels(page, files, log);
  await page.goto('/');
});
test.afterAll(async () => { await page?.close(); });

test('Reload loads from the cache with no weight requests', async ({ baseURL }) => {
  await loadViaUi(page, url(baseURL, 'm.st'));
  expect(weightRequests('m.st').length).toBeGreaterThan(0);
  await expect(page.locator('#cache-info')).toContainText('Cached: 1 model');
  await page.reload();
  log.length = 0;
  await loadViaUi(page, url(baseURL, 'm.st'));
  expect(weightRequests('m.st')).toEqual([]);
  expect(bytesOf('m.st')).toBeLessThanOrEqual(headerEnd(files['m.st'].data) + 4096); // only the header
  await expect(page.locator('#progress-text')).toContainText('from cache');
});

test('A changed file (new ETag and length) is fetched again', async ({ baseURL }) => {
  files['m.st'] = { ...golden('v6-bf16.st'), etag: '"v2"' };
  log.length = 0;
  await loadViaUi(page, url(baseURL, 'm.st'));
  await expect(page.locator('#model-info')).toContainText('RWKV v6');
  expect(weightRequests('m.st').length).toBeGreaterThan(0);
  expect(bytesOf('m.st')).toBeGreaterThanOrEqual(files['m.st'].data.length * 0.9);
});

test('An interrupted download leaves no complete-looking cache entry', async ({ baseURL }) => {
  files['cut.st'] = golden('v5.st');
  const cutAt = headerEnd(files['cut.st'].data);
  await page.route('**/e2e-models/cut.st', (route) => {
    const start = Number(/bytes=(\d+)/.exec(route.request().headers().range || '')?.[1] ?? 0);
    return start >= cutAt ? route.abort('connectionreset') : route.fallback();
  });
  await loadViaUi(page, url(baseURL, 'cut.st'), { expectError: true });
  await expect(page.locator('#status')).toContainText(/download|broke off|Could not/i);
  const marker = await page.evaluate(async () => {
    const c = await caches.open('webrwkv-models-v1');
    return (await c.keys()).map((r) => r.url).filter((u) => u.includes('cut.st') && u.endsWith('complete'));
  });
  expect(marker).toEqual([]);
  await page.unroute('**/e2e-models/cut.st');
  await loadViaUi(page, url(baseURL, 'cut.st')); // and the page loads again without a reload
  await expect(page.locator('#model-info')).toContainText('RWKV v5');
});

test('"Clear cached models" empties the cache, so the next load downloads again', async ({ baseURL }) => {
  await page.click('#clear-cache');
  await expect(page.locator('#cache-info')).toContainText(/empty/);
  log.length = 0;
  await loadViaUi(page, url(baseURL, 'm.st'));
  expect(weightRequests('m.st').length).toBeGreaterThan(0);
});
