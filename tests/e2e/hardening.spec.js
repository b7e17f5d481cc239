// Hostile input on the chat page: a model's name is shown as the text it is, never parsed as HTML.
const { test, expect } = require('@playwright/test');
const { hostModels, golden, url } = require('./models');
const { loadViaUi, byteVocab } = require('./ui');

test('A model name that looks like HTML is shown verbatim', async ({ page, baseURL }) => {
  // URLs percent-encode < and >, but & and ; pass: parsed as HTML this name read "R&D<b>.st"
  const name = 'R&amp;D&lt;b&gt;';
  await hostModels(page, { [`${name}.st`]: golden('v7.st'), [`${name}.vocab.txt`]: { data: byteVocab() } });
  await page.goto('/');
  await loadViaUi(page, url(baseURL, `${name}.st`));
  await expect(page.locator('#transcript .empty h2')).toHaveText(`${name}.st is ready`); // no card: chat
  await expect(page.locator('#model-chip-text')).toHaveText(`${name}.st`);
  await expect(page.locator('#model-info')).toContainText(`${name}.st · RWKV v7`);
});
