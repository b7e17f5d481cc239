// The chat page end to end (a streamed reply, Regenerate, New chat, speed stats, a phone-sized
// screenshot too) and the OpenAI-style chat.completions API of web/webrwkv.js.
const { test, expect } = require('@playwright/test');
const { hostModels, golden, url } = require('./models');
const { loadViaUi, send, byteVocab } = require('./ui');

// The bundled model when the server has one (it talks); else a tiny test model with a byte vocabulary.
async function pickModel(page, baseURL, bundled = true) {
  const r = await page.request.get(`${baseURL}/models/index.json`);
  const list = r.ok() ? (await r.json()).models || [] : [];
  if (bundled && list.length) return new URL(list[0].url, baseURL).href;
  await hostModels(page, { 'tiny.st': golden('v7.st'), 'tiny.vocab.txt': { data: byteVocab() } });
  return url(baseURL, 'tiny.st');
}

test('Chat page: streamed reply, regenerate at temperature 0, stats, screenshots', async ({ page, baseURL }, testInfo) => {
  const model = await pickModel(page, baseURL);
  await page.goto('/');
  await loadViaUi(page, model);
  await page.locator('#temperature').fill('0');
  await page.locator('#max-tokens').fill('16');
  const tokens = [];
  await page.exposeFunction('__seen', (t) => tokens.push(t));
  const first = await send(page, 'Hello! Who are you?');
  expect(first.length).toBeGreaterThan(0);
  await expect(page.locator('#stat-decode')).toContainText('tok/s');
  await expect(page.locator('#stat-prefill')).toContainText('tok/s');
  await expect(page.locator('#stat-adapter')).not.toHaveText('–');
  await expect(page.locator('#stat-py')).toContainText('%');
  const shot = testInfo.outputPath('chat.png');
  await page.screenshot({ path: shot });
  await testInfo.attach('chat', { path: shot, contentType: 'image/png' });

  await page.click('#regenerate');
  await expect(page.locator('#stop')).toBeHidden({ timeout: 240_000 });
  const again = await page.locator('.msg.bot .bubble').last().innerText();
  expect(again).toBe(first); // state restored, greedy: the same reply
  expect(await page.locator('.msg.bot').count()).toBe(1);

  await page.setViewportSize({ width: 390, height: 844 });
  const phone = testInfo.outputPath('chat-phone.png');
  await page.screenshot({ path: phone });
  await testInfo.attach('chat-phone', { path: phone, contentType: 'image/png' });

  await page.click('#new-chat');
  await expect(page.locator('.msg')).toHaveCount(0);
});

test('OpenAI-style chat.completions: streamed chunks and a full response', async ({ page, baseURL }) => {
  const model = await pickModel(page, baseURL, false); // the API's shapes: the tiny model is enough
  await page.goto('/');
  const r = await page.evaluate(async (u) => {
    const { createEngine } = await import('/webrwkv.js');
    const engine = await createEngine({ model: u });
    const messages = [{ role: 'user', content: 'Say something.' }];
    const chunks = [];
    const stream = await engine.chat.completions.create({ messages, stream: true, temperature: 0, max_tokens: 12 });
    for await (const c of stream) chunks.push(c);
    const full = await engine.chat.completions.create({ messages, temperature: 0, max_tokens: 12 });
    engine.dispose();
    return { chunks, full };
  }, model);
  expect(r.chunks[0].object).toBe('chat.completion.chunk');
  expect(r.chunks[0].choices[0].delta.role).toBe('assistant');
  const last = r.chunks.at(-1).choices[0];
  expect(['stop', 'length']).toContain(last.finish_reason);
  const streamed = r.chunks.map((c) => c.choices[0].delta.content || '').join('');
  expect(r.full.object).toBe('chat.completion');
  expect(r.full.choices[0].message.role).toBe('assistant');
  expect(r.full.choices[0].message.content).toBe(streamed.trim()); // temperature 0, fresh state both times
  expect(r.full.usage.completion_tokens).toBeGreaterThan(0);
});
