// Failures show a message in the page, and the page loads a good model afterwards without a reload.
const { test, expect, chromium } = require('@playwright/test');
const { hostModels, golden, url } = require('./models');
const { loadViaUi } = require('./ui');

const LFS = Buffer.from('version https://git-lfs.github.com/spec/v1\n' +
  'oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 1498107904\n');

test('Errors: no Range support, a Git LFS pointer, a missing file, a broken connection', async ({ page, baseURL }) => {
  const files = {
    'norange.st': { ...golden('v7.st'), range: false },
    'pointer.st': { data: LFS },
    'good.st': golden('v7.st'),
    'notes.st': { data: Buffer.from('<!doctype html><html><head><title>Sign in</title></head><body></body></html>') },
  };
  await hostModels(page, files);
  await page.route('**/e2e-models/offline.st', (route) => route.abort('internetdisconnected'));
  await page.goto('/');
  const cases = [
    ['norange.st', /ignored the Range request/],
    ['pointer.st', /Git LFS pointer/],
    ['missing.st', /not found/],
    ['offline.st', /Could not download/],
    ['notes.st', /web page, not a model/],
  ];
  for (const [name, message] of cases) {
    await loadViaUi(page, url(baseURL, name), { expectError: true });
    await expect(page.locator('#status')).toContainText(message);
  }
  await loadViaUi(page, url(baseURL, 'good.st'));
  await expect(page.locator('#status')).toBeHidden();
  await expect(page.locator('#send')).toBeEnabled();
});

test('A lost GPU device shows a message, and the model loads again without a reload', async ({ page, baseURL }) => {
  await hostModels(page, { 'm.st': golden('v7.st') });
  await page.goto('/');
  await loadViaUi(page, url(baseURL, 'm.st'));
  await page.evaluate(() => window.webrwkvApp.engine._loseDevice());
  await expect(page.locator('#status')).toContainText('GPU device was lost');
  await expect(page.locator('#send')).toBeDisabled();
  await loadViaUi(page, url(baseURL, 'm.st'));
  await expect(page.locator('#send')).toBeEnabled();
});

test('No WebGPU: without --enable-unsafe-webgpu the page says how to get it', async ({ baseURL }) => {
  const args = ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--no-first-run'];
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium', args });
  try {
    const page = await browser.newPage();
    await page.goto(baseURL + '/');
    const box = page.locator('#nowebgpu');
    await expect(box).toBeVisible();
    await expect(box).toContainText('chrome://flags/#enable-unsafe-webgpu');
    await expect(box).toContainText('Safari 26');
    await expect(page.locator('#load')).toBeDisabled();
  } finally {
    await browser.close();
  }
});
