// The page end to end with the real engine (chat as Juliet, Regenerate, New chat, speed stats, the
// playground against the official golden, phone screenshots) and the OpenAI-style chat.completions API.
const { test, expect } = require('@playwright/test');
const { hostModels, golden, url } = require('./models');
const { loadViaUi, send, byteVocab } = require('./ui');
const fs = require('fs');
const path = require('path');
const { execFileSync } = require('child_process');

const ROOT = path.join(__dirname, '..', '..');
const greedyGolden = JSON.parse(fs.readFileSync(path.join(ROOT, 'tests', 'golden', 'browser_greedy.json'), 'utf8'));

// The bundled model when the server has one (it talks); else a tiny test model with a byte vocabulary.
async function pickModel(page, baseURL, bundled = true) {
  const r = await page.request.get(`${baseURL}/models/index.json`);
  const list = r.ok() ? (await r.json()).models || [] : [];
  if (bundled && list.length) return new URL(list[0].url, baseURL).href;
  await hostModels(page, { 'tiny.st': golden('v7.st'), 'tiny.vocab.txt': { data: byteVocab() } });
  return url(baseURL, 'tiny.st');
}

test('Chat page: the bundled model answers as Juliet, Regenerate at temperature 0, stats, screenshots', async ({ page, baseURL }, testInfo) => {
  test.setTimeout(600_000); // the bundled model on SwiftShader: generous on a busy machine
  const model = await pickModel(page, baseURL);
  await page.goto('/');
  await loadViaUi(page, model);
  await expect(page.locator('#play-view')).toBeVisible(); // a completion model opens in the playground
  await page.click('#mode-chat');
  await expect(page.locator('#transcript .empty')).toContainText('Romeo'); // it says what the chat is
  await page.locator('#temperature').fill('0');
  await page.locator('#max-tokens').fill('8');
  const first = await send(page, 'Good morrow, fair Juliet.');
  expect(first.length).toBeGreaterThan(0);
  await expect(page.locator('#stat-decode')).toContainText('tok/s');
  await expect(page.locator('#stat-prefill')).toContainText('tok/s');
  await expect(page.locator('#stat-adapter')).not.toHaveText('–');
  await expect(page.locator('#stat-py')).toContainText('%');
  await expect(page.locator('#tokens')).toHaveText(/^[1-9]\d+ tokens in context · trained on 256$/);
  await expect(page.locator('.conv-title')).toHaveText(['Good morrow, fair Juliet.']); // saved and listed
  const shot = testInfo.outputPath('chat.png');
  await page.screenshot({ path: shot });
  await testInfo.attach('chat', { path: shot, contentType: 'image/png' });

  await page.locator('.msg.bot .tool', { hasText: 'Regenerate' }).click();
  await expect(page.locator('#stop')).toBeHidden({ timeout: 240_000 });
  const again = await page.locator('.msg.bot .bubble').last().innerText();
  expect(again).toBe(first); // the same conversation read again, greedy: the same reply
  await expect(page.locator('.conv-title')).toHaveText(['Good morrow, fair Juliet.']);
  expect(await page.locator('.msg.bot').count()).toBe(1);

  await page.setViewportSize({ width: 390, height: 844 });
  const phone = testInfo.outputPath('chat-phone.png');
  await page.screenshot({ path: phone });
  await testInfo.attach('chat-phone', { path: phone, contentType: 'image/png' });

  await page.click('#new-chat');
  await expect(page.locator('.msg')).toHaveCount(0);
});

test('Playground: the bundled model continues a text exactly as the official package does', async ({ page, baseURL }) => {
  test.setTimeout(600_000); // the bundled model on SwiftShader: generous on a busy machine
  const c = greedyGolden.cases.find((x) => x.bundled);
  const expected = c.prompt + execFileSync(path.join(ROOT, '.venv', 'bin', 'python'), ['-c',
    'import json,sys; from webrwkv.tokenizer import Tokenizer; sys.stdout.write(Tokenizer(sys.argv[1]).decode(json.loads(sys.argv[2])))',
    path.join(ROOT, 'models', 'rwkv7-shakespeare.vocab.txt'), JSON.stringify(c.ids)], { encoding: 'utf8' });
  await page.goto('/');
  await loadViaUi(page, await pickModel(page, baseURL));
  await expect(page.locator('#play-text')).toHaveValue(/^ACT II\. SCENE II\./); // the card's sample prompt
  await page.locator('#temperature').fill('0');
  await page.locator('#presence').fill('0');
  await page.locator('#frequency').fill('0');
  await page.locator('#max-tokens').fill(String(c.max_tokens));
  await page.fill('#play-text', c.prompt);
  await page.click('#play-go');
  await expect(page.locator('#play-stop')).toBeHidden({ timeout: 240_000 });
  await expect(page.locator('#play-go')).toBeEnabled();
  expect(await page.locator('#play-text').inputValue()).toBe(expected);
  await page.click('#play-undo');
  expect(await page.locator('#play-text').inputValue()).toBe(c.prompt);
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

test('chat.completions honours max_tokens, stop, seed, top_p and signal; options are checked with clear errors', async ({ page, baseURL }) => {
  const model = await pickModel(page, baseURL, false);
  await page.goto('/');
  const r = await page.evaluate(async (u) => {
    const { createEngine } = await import('/webrwkv.js');
    const engine = await createEngine({ model: u });
    const messages = [{ role: 'user', content: 'Say something.' }];
    const create = (o, opts) => engine.chat.completions.create({ messages, ...o }, opts);
    const text = async (o) => (await create(o)).choices[0].message.content;
    const err = async (f) => { try { await f(); return null; } catch (e) { return { name: e.name, kind: e.kind, message: e.message }; } };
    const out = {};
    const greedy = await create({ temperature: 0, max_tokens: 24 });
    out.greedy = greedy.choices[0].message.content;
    out.five = await create({ temperature: 0, max_tokens: 5 });
    const cut = out.greedy.slice(Math.floor(out.greedy.length / 2), Math.floor(out.greedy.length / 2) + 2);
    out.cut = cut;
    out.stopped = await text({ temperature: 0, max_tokens: 24, stop: [cut] });
    out.seedA = await text({ temperature: 1.5, max_tokens: 16, seed: 42 });
    out.seedB = await text({ temperature: 1.5, max_tokens: 16, seed: 42 });
    out.topP = await text({ temperature: 1.5, top_p: 0.001, max_tokens: 24, seed: 3 });
    // signal: aborting mid-stream ends the for-await loop with an AbortError, and the engine works on
    const ctrl = new AbortController();
    out.abort = await err(async () => {
      const stream = await create({ stream: true, max_tokens: 200, temperature: 1, seed: 1 }, { signal: ctrl.signal });
      ctrl.abort(); // while the reply is still being written
      for await (const c of stream) void c;
    });
    out.pre = await err(() => create({ signal: AbortSignal.abort() }));
    const g = new AbortController();
    let n = 0;
    out.genAbort = await err(async () => { for await (const t of engine.generate([1, 2], { maxTokens: 300, ignoreEos: true, signal: g.signal })) { if (++n === 2) g.abort(); } });
    out.genN = n;
    out.after = await text({ temperature: 0, max_tokens: 24 });
    out.errors = await Promise.all([
      err(() => engine.generate('x', { maxTokens: 'abc' })),
      err(() => engine.generate('x', { maxTokens: -1 })),
      err(() => engine.generate('x', { max_tokens: 5 })),
      err(() => engine.generate('x', { topP: 2 })),
      err(() => create({ max_tokens: 0 })),
      err(() => create({ temperature: 'hot' })),
      err(() => create({ maxTokens: 5 })),
      err(() => engine.chat.completions.create({ messages: [{ role: 'robot', content: 'x' }] })),
      err(() => createEngine({ quant: 'int4' })),
      err(() => createEngine({ base_url: '/' })),
    ]);
    engine.dispose();
    return out;
  }, model);
  expect(r.greedy.length).toBeGreaterThan(4);
  expect(r.five.usage.completion_tokens).toBeLessThanOrEqual(5);
  if (r.five.usage.completion_tokens === 5) expect(r.five.choices[0].finish_reason).toBe('length');
  expect(r.five.usage.total_tokens).toBe(r.five.usage.prompt_tokens + r.five.usage.completion_tokens);
  expect(r.stopped).toBe(r.greedy.slice(0, r.greedy.indexOf(r.cut)).trim());
  expect(r.seedA).toBe(r.seedB);
  expect(r.topP).toBe(r.greedy); // top_p this small keeps only the most likely token: greedy
  expect(r.abort).toMatchObject({ name: 'AbortError' });
  expect(r.pre).toMatchObject({ name: 'AbortError' });
  expect(r.genAbort).toMatchObject({ name: 'AbortError' });
  expect(r.genN).toBe(2);
  expect(r.after).toBe(r.greedy);
  const [abc, neg, snake, topP, zero, hot, camel, role, quant, base] = r.errors;
  for (const e of r.errors) expect(e).toMatchObject({ kind: 'options' });
  expect(abc.message).toBe('generate: maxTokens must be a whole number of at least 1, got "abc".');
  expect(neg.message).toContain('maxTokens must be a whole number of at least 1, got -1');
  expect(snake.message).toContain('unknown option max_tokens (did you mean maxTokens?)');
  expect(topP.message).toContain('topP must be a number above 0 and at most 1');
  expect(zero.message).toContain('max_tokens must be a whole number of at least 1, got 0');
  expect(hot.message).toContain('temperature must be a number of at least 0');
  expect(camel.message).toContain('unknown option maxTokens (did you mean max_tokens?)');
  expect(role.message).toContain('messages[0].role must be "system", "user" or "assistant"');
  expect(quant.message).toContain('quant must be one of none, int8, nf4');
  expect(base.message).toContain('did you mean baseUrl?');
});
