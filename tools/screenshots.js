// The README's screenshots of the page (docs/screenshot-playground.png, docs/screenshot-chat.png), and
// phone / dark ones to look at: node tools/screenshots.js [BASE_URL] [OUT_DIR_FOR_EXTRAS]
// Needs a running `webrwkv serve` (default http://127.0.0.1:8000) and the system Chromium.
const path = require('path');
const { chromium } = require('@playwright/test');

const BASE = (process.argv[2] || 'http://127.0.0.1:8000').replace(/\/$/, '');
const EXTRA = process.argv[3] || path.join(__dirname, '..', 'test-results', 'screenshots');
const DOCS = path.join(__dirname, '..', 'docs');
const ARGS = ['--no-sandbox', '--enable-unsafe-webgpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'];

async function idle(page) {
  await page.waitForFunction(() => window.webrwkvApp && !window.webrwkvApp.busy && !window.webrwkvApp.loading, null, { timeout: 300_000 });
  await page.waitForTimeout(300);
}

(async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium', args: ARGS });
  for (const scheme of ['light', 'dark']) {
    const ctx = await browser.newContext({ viewport: { width: 1360, height: 820 }, colorScheme: scheme, deviceScaleFactor: 1 });
    const page = await ctx.newPage();
    await page.goto(`${BASE}/`);
    await page.waitForFunction(() => !document.getElementById('load').disabled);
    await page.screenshot({ path: path.join(EXTRA, `first-visit-${scheme}.png`) });
    await page.click('#load');
    await page.waitForFunction(() => window.webrwkvApp.model, null, { timeout: 300_000 });
    await idle(page);
    await page.locator('#max-tokens').fill('40');
    await page.click('#play-go');
    await idle(page);
    await page.screenshot({ path: scheme === 'light' ? path.join(DOCS, 'screenshot-playground.png') : path.join(EXTRA, `playground-${scheme}.png`) });
    await page.click('#mode-chat');
    await page.locator('#max-tokens').fill('16');
    for (const msg of ['Good morrow, fair Juliet.', 'Wilt thou walk with me tonight?']) {
      await page.fill('#input', msg);
      await page.press('#input', 'Enter');
      await idle(page);
    }
    await page.screenshot({ path: scheme === 'light' ? path.join(DOCS, 'screenshot-chat.png') : path.join(EXTRA, `chat-${scheme}.png`) });
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(300);
    await page.screenshot({ path: path.join(EXTRA, `chat-phone-${scheme}.png`) });
    await page.click('#mode-play');
    await page.screenshot({ path: path.join(EXTRA, `playground-phone-${scheme}.png`) });
    await page.click('#settings-toggle');
    await page.waitForTimeout(400);
    await page.screenshot({ path: path.join(EXTRA, `settings-phone-${scheme}.png`) });
    await ctx.close();
  }
  await browser.close();
})().catch((e) => { console.error(e); process.exit(1); });
