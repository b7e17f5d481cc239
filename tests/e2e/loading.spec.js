// Loading with the real engine: a failed load keeps the model that works (or says plainly that none is
// left), Cancel while the GPU kernels are prepared leaves no model that the page believes in, and the
// load line reports the download's own rate.
const { test, expect } = require('@playwright/test');
const { hostModels, golden, url } = require('./models');
const { loadViaUi, send, byteVocab } = require('./ui');

test('A failed load keeps the working model; one that fails after freeing it says so', async ({ page, baseURL }) => {
  const files = { 'good.st': golden('v7.st'), 'good.vocab.txt': { data: byteVocab() }, 'cut.st': golden('v5.st') };
  const cutAt = 8 + Number(files['cut.st'].data.readBigUInt64LE(0));
  await hostModels(page, files);
  await page.route('**/e2e-models/cut.st', (route) => {
    const start = Number(/bytes=(\d+)/.exec(route.request().headers().range || '')?.[1] ?? 0);
    return start >= cutAt ? route.abort('connectionreset') : route.fallback();
  });
  await page.goto('/');
  await loadViaUi(page, url(baseURL, 'good.st'));
  // the rate shown is the download's own (bytes / streaming seconds), not bytes / the whole load
  const l = await page.evaluate(() => window.webrwkvApp.engine.model.load);
  expect(l.streamSeconds).toBeGreaterThan(0);
  expect(l.streamSeconds).toBeLessThan(l.seconds);
  // the phases account for the load: each took some time, the stream's is the weights' own, and together
  // they are the whole load but the worker's few steps around them
  for (const k of ['header', 'plan', 'stream', 'finish']) expect(l.phases[k]).toBeGreaterThan(0);
  // (the download may start while the load is planned)
  expect(l.phases.plan + l.phases.stream).toBeGreaterThanOrEqual(l.streamSeconds);
  const sum = l.phases.header + l.phases.plan + l.phases.stream + l.phases.finish;
  expect(sum).toBeLessThanOrEqual(l.seconds);
  expect(sum).toBeGreaterThan(0.8 * l.seconds);
  // the kernels' times: Python's dry run that writes their sources is a part of their compile
  const k = await page.evaluate(() => window.webrwkvApp.engine.model.kernels);
  expect(k.record_s).toBeGreaterThan(0);
  expect(k.record_s).toBeLessThan(k.compile_s);
  expect(k.compile_s).toBeLessThanOrEqual(k.seen_s); // stamped as each settled, before Python saw them all
  expect(k.ready_s).toBeGreaterThan(0);
  const shown = Number(/download ([\d.]+) MB\/s/.exec(await page.locator('#progress-text').innerText())[1]);
  expect(shown).toBeCloseTo(l.fetched / 1e6 / l.streamSeconds, 0);

  await loadViaUi(page, url(baseURL, 'missing.st'), { expectError: true });
  await expect(page.locator('#status')).toContainText('not found');
  await expect(page.locator('#status')).toContainText('good.st is still loaded');
  await expect(page.locator('#model-info')).toContainText('good.st');
  await page.click('#mode-chat');
  await expect(page.locator('#send')).toBeEnabled();
  await page.locator('#max-tokens').fill('8');
  await page.locator('#temperature').fill('0');
  expect((await send(page, 'Hello')).length).toBeGreaterThan(0); // it still answers

  await loadViaUi(page, url(baseURL, 'cut.st'), { expectError: true });
  await expect(page.locator('#status')).toContainText('No model is loaded now');
  await expect(page.locator('#model-info')).toHaveText('');
  await expect(page.locator('#model-chip-text')).toHaveText('No model');
  await expect(page.locator('#send')).toBeDisabled();
});

test('Cancel while the GPU kernels are prepared leaves no half-loaded model', async ({ page, baseURL }) => {
  await hostModels(page, { 'good.st': golden('v7.st') });
  await page.goto('/');
  await expect(page.locator('#load')).toBeEnabled({ timeout: 120_000 });
  // press Cancel the moment kernel preparation starts (it cannot be interrupted: the load must end unloaded)
  await page.evaluate(() => {
    const text = document.getElementById('progress-text');
    new MutationObserver((_, obs) => {
      if (text.textContent.includes('Preparing the GPU kernels')) { obs.disconnect(); window.__cancelledAt = text.textContent; document.getElementById('cancel-load').click(); }
    }).observe(text, { childList: true, characterData: true, subtree: true });
  });
  await page.fill('#model-url', url(baseURL, 'good.st'));
  await page.click('#load');
  await expect(page.locator('#load')).toBeEnabled({ timeout: 240_000 });
  expect(await page.evaluate(() => window.__cancelledAt)).toContain('Preparing the GPU kernels');
  await expect(page.locator('#status')).toContainText('cancelled');
  await expect(page.locator('#model-info')).toHaveText('');
  expect(await page.evaluate(() => window.webrwkvApp.model)).toBeNull();
  const err = await page.evaluate(() => window.webrwkvApp.engine.countTokens('x').then(() => null, (e) => e.message));
  expect(err).toContain('no model is loaded'); // the worker agrees: nothing is loaded
  await loadViaUi(page, url(baseURL, 'good.st')); // and a load afterwards works
  await expect(page.locator('#model-info')).toContainText('RWKV v7');
});

test('A load with a mirror checks it first: a mirror of other bytes fails the load and the model stays', async ({ page, baseURL }) => {
  const good = golden('v7.st');
  const other = Buffer.from(good.data);
  other[100] ^= 1; // in the header
  const log = await hostModels(page, { 'good.st': good, 'good.vocab.txt': { data: byteVocab() }, 'other.st': { data: other } });
  await page.goto('/');
  const mirrorOf = (name) => url(baseURL, name).replace('127.0.0.1', 'localhost');
  const r = await page.evaluate(async ({ u, m, bad }) => {
    const { createEngine } = await import('/webrwkv.js');
    const engine = await createEngine({});
    const ids = async () => { await engine.reset(); const out = []; for await (const t of engine.generate([5, 6, 7], { maxTokens: 8, temperature: 0 })) out.push(t.token); return out; };
    const err = async (f) => { try { await f(); return null; } catch (e) { return { kind: e.kind, message: e.message, modelKept: e.modelKept }; } };
    await engine.load(u, { cache: false });
    const plain = await ids();
    await engine.load(u, { cache: false, mirrors: [m] });
    const mirrored = await ids();
    const failed = await err(() => engine.load(u, { cache: false, mirrors: [m, bad] }));
    const after = await ids();
    const opts = await err(() => engine.load(u, { mirrors: m }));
    engine.dispose();
    return { plain, mirrored, failed, after, opts };
  }, { u: url(baseURL, 'good.st'), m: mirrorOf('good.st'), bad: mirrorOf('other.st') });
  expect(r.plain.length).toBe(8);
  expect(r.mirrored).toEqual(r.plain);
  expect(r.failed).toMatchObject({ kind: 'badfile' });
  expect(r.failed.message).toMatch(/^The mirror localhost:\d+\/other.st does not hold the same file as 127.0.0.1:\d+\/good.st/);
  expect(r.failed.modelKept).not.toBe(false);
  expect(r.after).toEqual(r.plain); // the model loaded before still answers
  expect(r.opts).toMatchObject({ kind: 'options', message: expect.stringContaining('load: mirrors must be an array of at most 7 URLs') });
  expect(log.some((e) => e.name === 'good.st' && e.host.startsWith('localhost:'))).toBe(true); // the mirror was asked
});
