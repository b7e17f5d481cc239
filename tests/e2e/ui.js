// Drive the chat page (web/index.html) like a user: load a model from a URL, send a message.
const { expect } = require('@playwright/test');

async function loadViaUi(page, modelUrl, { expectError = false } = {}) {
  await expect(page.locator('#load')).toBeEnabled({ timeout: 120_000 });
  await page.fill('#model-url', modelUrl);
  await page.click('#load');
  await expect(page.locator('#load')).toBeEnabled({ timeout: 240_000 }); // loading has ended
  if (expectError) {
    await expect(page.locator('#status')).toBeVisible();
  } else {
    await expect(page.locator('#status')).toBeHidden();
    await expect(page.locator('#model-info')).toContainText('RWKV');
  }
}

async function send(page, text) {
  await page.fill('#input', text);
  await page.click('#send');
  await expect(page.locator('#stop')).toBeHidden({ timeout: 240_000 });
  return page.locator('.msg.bot .bubble').last().innerText();
}

// A byte-level vocabulary (id i = byte i-1), for the tiny 256-token test models.
function byteVocab() {
  const lines = [];
  for (let i = 1; i <= 256; i++) lines.push(`${i} b'\\x${(i - 1).toString(16).padStart(2, '0')}' 1`);
  return Buffer.from(lines.join('\n') + '\n');
}

module.exports = { loadViaUi, send, byteVocab };
