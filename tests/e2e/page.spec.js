// The page's own behaviour against a scripted worker (tests/e2e/fake-worker.js, served in place of
// web/worker.js), so layout and streaming are checked fast and exactly: message geometry, markdown
// while streaming, conversations kept across reloads, edit / regenerate / delete, the system prompt,
// the token counter, Esc, load progress and the cache line, and the phone drawer.
const { test, expect } = require('@playwright/test');
const fs = require('fs');
const path = require('path');

const FAKE = fs.readFileSync(path.join(__dirname, 'fake-worker.js'), 'utf8');

async function fakeEngine(page, config) {
  await page.route('**/worker.js', (r) => r.fulfill({ contentType: 'text/javascript', body: FAKE }));
  await page.route('**/__fake/config', (r) => r.fulfill({ contentType: 'application/json', body: JSON.stringify(config) }));
}

async function loadModel(page) {
  await page.click('#load');
  await expect(page.locator('#model-info')).toContainText('RWKV v7');
  await expect(page.locator('#load')).toBeEnabled();
}

async function chat(page, text) {
  if (await page.locator('#mode-chat').count()) await page.click('#mode-chat');
  await page.fill('#input', text);
  await page.press('#input', 'Enter');
  await expect(page.locator('#stop')).toBeHidden();
  await expect(page.locator('#send')).toBeVisible();
}

// Distinct line boxes of an element's text (1 = it renders on one line).
const lines = (loc) => loc.evaluate((el) => {
  const tops = new Set();
  const walk = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  for (let n = walk.nextNode(); n; n = walk.nextNode()) {
    const r = document.createRange();
    r.selectNodeContents(n);
    for (const b of r.getClientRects()) if (b.width > 0) tops.add(Math.round(b.top));
  }
  return tops.size;
});

test('Short messages render on one line, and a reply keeps no trailing blank line', async ({ page }) => {
  await fakeEngine(page, { replies: [['Scotland', ' and', ' Guildenstern.', '\n', '\n ']] });
  await page.goto('/');
  await loadModel(page);
  await chat(page, 'Hello! Who are you?');
  const user = page.locator('.msg.user .bubble').last();
  const bot = page.locator('.msg.bot .bubble').last();
  await expect(user).toHaveText('Hello! Who are you?');
  expect(await lines(user)).toBe(1);
  expect(await lines(bot)).toBe(1);
  expect(await bot.evaluate((el) => el.innerText)).toBe('Scotland and Guildenstern.');
  const box = await bot.boundingBox();
  expect(box.height).toBeLessThan(60); // one line plus padding: no empty line at the end
  await page.setViewportSize({ width: 390, height: 844 });
  expect(await lines(user)).toBe(1);
  expect(await lines(bot)).toBe(1);
});

test('Markdown renders while tokens stream in, sanitized, with a Copy button on code', async ({ page, context }) => {
  await context.grantPermissions(['clipboard-read', 'clipboard-write']);
  const tokens = ['Here', ' is', ' **bo', 'ld**', ' text', ':\n\n', '```js\n', 'let x', ' = 1;\n', '```\n\n', '- one\n', '- two\n\n',
    '| a | b |\n', '|---|---|\n', '| 1 | 2 |\n\n', 'A [link](https://example.org) ', '<img src=x onerror="window.__xss=1">',
    '<script>window.__xss=2</script> end'];
  await fakeEngine(page, { replies: [tokens], tokenDelay: 120 });
  await page.goto('/');
  await loadModel(page);
  await page.click('#mode-chat');
  await page.fill('#input', 'Show me markdown');
  await page.press('#input', 'Enter');
  const bot = page.locator('.msg.bot .bubble').last();
  await expect(bot.locator('strong')).toHaveText('bold');   // rendered mid-stream...
  await expect(bot).toHaveClass(/streaming/);               // ...while the reply is still coming
  await expect(bot.locator('pre code')).toContainText('let x');
  expect(await bot.evaluate((el) => el.innerText.includes('```'))).toBe(false); // an open fence is drawn as code, not text
  await expect(page.locator('#stop')).toBeHidden();
  await expect(bot.locator('pre code')).toHaveText(/^let x = 1;\n?$/);
  await expect(bot.locator('li')).toHaveText(['one', 'two']);
  await expect(bot.locator('td')).toHaveText(['1', '2']);
  await expect(bot.locator('a')).toHaveAttribute('target', '_blank');
  await expect(bot.locator('a')).toHaveAttribute('rel', /noopener/);
  await expect(bot.locator('img, script')).toHaveCount(0);
  expect(await page.evaluate(() => window.__xss)).toBeUndefined();
  await bot.locator('.copy-code').click();
  await expect(bot.locator('.copy-code')).toHaveText('Copied');
  expect((await page.evaluate(() => navigator.clipboard.readText())).trim()).toBe('let x = 1;');
});

test('Conversations are saved, listed, restored after a reload, exported and deleted', async ({ page }) => {
  await fakeEngine(page, { replies: [['First answer.'], ['Second answer.']] });
  await page.goto('/');
  await loadModel(page);
  await chat(page, 'First question');
  await page.click('#new-chat');
  await expect(page.locator('.msg')).toHaveCount(0);
  await chat(page, 'Second question');
  await expect(page.locator('.conv-title')).toHaveText(['Second question', 'First question']);
  await page.reload();
  await page.click('#mode-chat');
  await expect(page.locator('.conv-title')).toHaveText(['Second question', 'First question']);
  await expect(page.locator('.msg .bubble')).toHaveText(['Second question', 'Second answer.']); // the last one opened
  await page.locator('.conv-open', { hasText: 'First question' }).click();
  await expect(page.locator('.msg .bubble')).toHaveText(['First question', 'First answer.']);
  const md = await download(page, '#export-md');
  expect(md).toContain('**You:**\n\nFirst question');
  expect(md).toContain('**Model:**\n\nFirst answer.');
  const json = JSON.parse(await download(page, '#export-json'));
  expect(json.messages).toEqual([{ role: 'user', content: 'First question' }, { role: 'assistant', content: 'First answer.' }]);
  page.once('dialog', (d) => d.accept());
  await page.locator('.conv', { hasText: 'First question' }).locator('.conv-del').click();
  await expect(page.locator('.conv-title')).toHaveText(['Second question']);
  await page.reload();
  await page.click('#mode-chat');
  await expect(page.locator('.conv-title')).toHaveText(['Second question']);
});

async function download(page, button) {
  const [d] = await Promise.all([page.waitForEvent('download'), page.click(button)]);
  return fs.readFileSync(await d.path(), 'utf8');
}

test('System prompt, regenerate, edit-and-resend, delete and the token counter; Esc stops a reply', async ({ page }) => {
  const long = Array.from({ length: 300 }, (_, i) => ` w${i}`);
  await fakeEngine(page, { replies: [['One.'], ['Two.'], ['Three.'], long], tokenDelay: 15 });
  await page.goto('/');
  await loadModel(page);
  await page.click('#mode-chat');
  await page.click('#system-toggle');
  await page.fill('#system', 'Be brief.');
  await chat(page, 'Hi');
  const prompts = () => page.evaluate(() => window.webrwkvApp.engine._w.call('fakePrompts'));
  const first = 'Be brief.\n\nUser: Hi\n\nAssistant:';
  expect((await prompts())[0]).toBe(first);
  // usage of the reply: the prompt's tokens (the fake counts characters) and one completion token
  await expect(page.locator('#tokens')).toHaveText(`${first.length + 1} tokens in context`);

  await page.locator('.msg.bot .tool', { hasText: 'Regenerate' }).click();
  await expect(page.locator('.msg .bubble')).toHaveText(['Hi', 'Two.']);
  expect((await prompts())[1]).toBe(first); // the same conversation, read again

  await page.locator('.msg.user .tool', { hasText: 'Edit' }).click();
  await page.fill('.edit-box', 'Hello');
  await page.click('text=Save & send');
  await expect(page.locator('.msg .bubble')).toHaveText(['Hello', 'Three.']);
  expect((await prompts())[2]).toBe('Be brief.\n\nUser: Hello\n\nAssistant:');

  await page.locator('.msg.bot .tool', { hasText: 'Delete' }).click();
  await expect(page.locator('.msg .bubble')).toHaveText(['Hello']);

  await page.fill('#input', 'Go on');
  await page.press('#input', 'Enter');
  await expect(page.locator('.msg.bot .bubble').last()).toContainText('w5');
  await page.keyboard.press('Escape');
  await expect(page.locator('#stop')).toBeHidden({ timeout: 5000 });
  await expect(page.locator('.msg.bot .meta').last()).toContainText('stopped');
  expect((await page.locator('.msg.bot .bubble').last().innerText()).length).toBeLessThan(long.join('').length);
});

test('Before any load the cache line is known and the Max tokens slider shows its value', async ({ page }) => {
  await fakeEngine(page, {});
  await page.goto('/');
  await expect(page.locator('#cache-info')).toHaveText(/^Cache(d: \d+ models?, .+|: empty)$/);
  await expect(page.locator('#max-tokens-out')).toHaveText('200');
  await expect(page.locator('#max-tokens')).toHaveValue('200');
});

test('"Clear cached models" before any load starts no engine and leaves no progress bar running', async ({ page }) => {
  await fakeEngine(page, {});
  await page.goto('/');
  await page.click('#clear-cache');
  await expect(page.locator('#cache-info')).toHaveText('Cache: empty');
  await page.waitForTimeout(1000);
  await expect(page.locator('#progress')).toBeHidden();
});

test('Kernel preparation shows determinate progress, and the load line gives the download\'s own rate', async ({ page }) => {
  await fakeEngine(page, { kernels: 20, kernelDelay: 60 });
  await page.goto('/');
  await page.click('#load');
  await expect(page.locator('#progress-text')).toHaveText(/Preparing the GPU kernels… (\d+) \/ 20/);
  await expect(page.locator('#progress')).not.toHaveClass(/indeterminate/);
  expect(await page.locator('#progress-fill').evaluate((el) => parseFloat(el.style.width))).toBeGreaterThan(0);
  await expect(page.locator('#model-info')).toContainText('RWKV v7');
  // 1 MB streamed in 0.02 s of a 2 s load: the rate is the download's, 50 MB/s, not 0.5
  await expect(page.locator('#progress-text')).toHaveText('1.00 MB in 2.0 s · download 50.0 MB/s');
});

test('On a phone the settings drawer gives the page back once the model is loaded', async ({ page }) => {
  await fakeEngine(page, {});
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto('/');
  await page.click('#settings-toggle');
  await expect(page.locator('#side')).toBeVisible();
  await page.click('#load');
  await expect(page.locator('#model-info')).toContainText('RWKV v7');
  await expect(page.locator('#side')).toBeHidden();
});

test('The accent buttons\' text has WCAG AA contrast (4.5:1) in both colour schemes, hovered or not', async ({ page }) => {
  await fakeEngine(page, {});
  const lum = ([r, g, b]) => [r, g, b].map((v) => v / 255).map((c) => (c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4))
    .reduce((t, c, i) => t + c * [0.2126, 0.7152, 0.0722][i], 0);
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const rgb = (s) => s.match(/[\d.]+/g).slice(0, 3).map(Number);
  for (const colorScheme of ['light', 'dark']) {
    await page.emulateMedia({ colorScheme });
    await page.goto('/');
    await page.addStyleTag({ content: '* { transition: none !important; }' }); // the hover colour at once
    const btn = page.locator('#load');
    await expect(btn).toBeEnabled();
    await page.mouse.move(0, 0);
    const colours = async () => btn.evaluate((el) => { const s = getComputedStyle(el); return [s.color, s.backgroundColor]; });
    const [fg, bg] = await colours();
    await btn.hover();
    await expect.poll(async () => (await colours())[1]).not.toBe(bg);
    const [hfg, hbg] = await colours();
    expect(ratio(rgb(fg), rgb(bg)), `${colorScheme}: ${fg} on ${bg}`).toBeGreaterThanOrEqual(4.5);
    expect(ratio(rgb(hfg), rgb(hbg)), `${colorScheme} hovered: ${hfg} on ${hbg}`).toBeGreaterThanOrEqual(4.5);
  }
});

test('Before a model the token counters are empty; while the model writes they go up a token at a time', async ({ page }) => {
  const long = Array.from({ length: 60 }, (_, i) => ` w${i}`);
  await fakeEngine(page, { replies: [long], tokenDelay: 40 });
  await page.goto('/');
  await expect(page.locator('#load')).toBeEnabled();
  await expect(page.locator('#tokens')).toHaveText('');
  await page.click('#mode-play');
  await expect(page.locator('#play-tokens')).toHaveText('');
  await loadModel(page);
  await page.click('#mode-play');
  await page.fill('#play-text', 'ACT I.');
  await expect(page.locator('#play-tokens')).toHaveText('6 tokens'); // the fake counts characters
  await page.click('#play-go');
  await expect(page.locator('#play-text')).toHaveValue(/ w10/);
  // mid-stream: the text's tokens plus one a written token (11 or more written here, not all 60)
  const mid = Number(/^(\d+) tokens$/.exec(await page.locator('#play-tokens').innerText())[1]);
  expect(mid).toBeGreaterThanOrEqual(6 + 11);
  expect(mid).toBeLessThan(6 + 60);
  await expect(page.locator('#play-stop')).toBeHidden();
  await expect(page.locator('#play-tokens')).toHaveText(`${('ACT I.' + long.join('')).length} tokens`); // then the exact count
  // the chat's context count: the conversation as the model reads it, then a token a streamed piece
  await page.click('#mode-chat');
  await page.fill('#input', 'Hi');
  await page.press('#input', 'Enter');
  await expect(page.locator('.msg.bot .bubble').last()).toContainText('w10');
  const read = 'User: Hi\n\nAssistant:'.length;
  const ctx = Number(/^(\d+) tokens in context/.exec(await page.locator('#tokens').innerText())[1]);
  expect(ctx).toBeGreaterThanOrEqual(read + 10);
  expect(ctx).toBeLessThan(read + 60);
  await expect(page.locator('#stop')).toBeHidden();
  await expect(page.locator('#tokens')).toHaveText(`${read + 60} tokens in context`); // the reply's usage
});
