// Browser smoke test: Pyodide and its wheels come from the project's own server (no CDN),
// the built webrwkv wheel installs with micropip, and Python drives a WebGPU compute.
const { test, expect } = require('@playwright/test');
const fs = require('fs');
const path = require('path');

function builtWheel() {
  const dist = path.join(__dirname, '..', '..', 'dist');
  const wheels = fs.existsSync(dist) ? fs.readdirSync(dist).filter((f) => /^webrwkv-.*\.whl$/.test(f)) : [];
  if (wheels.length !== 1) throw new Error(`expected one webrwkv wheel in dist/, found ${wheels.length}: run tools/setup.sh`);
  return wheels[0];
}

test('Pyodide + numpy + webrwkv wheel + WebGPU compute from Python', async ({ page, baseURL }) => {
  const wheel = builtWheel();
  const foreign = [];
  page.on('request', (req) => { if (!req.url().startsWith(baseURL)) foreign.push(req.url()); });
  page.on('console', (msg) => { if (msg.type() === 'error') console.log(`[browser] ${msg.text()}`); });

  await page.goto(`/test/smoke.html?wheel=${encodeURIComponent(wheel)}`);
  await page.waitForFunction(() => window.smokeResult !== undefined, null, { timeout: 150_000 });
  const r = await page.evaluate(() => window.smokeResult);
  console.log(`smoke: Pyodide ${r.pyodide}, numpy ${r.numpy}, adapter "${r.adapter}", ${Number(r.seconds).toFixed(1)} s`);

  expect(r.error).toBeUndefined();
  expect(r.gpu).toBe(true);
  expect(r.pyodide).toBe('0.27.7');
  expect(r.numpy).toBe('2.0.2');
  expect(wheel).toContain(`webrwkv-${r.webrwkv}-`);
  // the wheel must carry the World vocabulary and every shader the repository has
  const shaders = fs.readdirSync(path.join(__dirname, '..', '..', 'shaders')).filter((f) => f.endsWith('.wgsl'));
  expect(r.package_files).toEqual(expect.arrayContaining(['rwkv_vocab_v20230424.txt', ...shaders]));
  // doubling on the GPU: compare against the input formula computed here, independently
  const expected = Array.from({ length: 8 }, (_, i) => (i - 500) * 0.25 * 2);
  expect(r.input).toEqual(Array.from({ length: 8 }, (_, i) => (i - 500) * 0.25));
  expect(r.output).toEqual(expected);
  expect(r.max_error).toBe(0);
  expect(foreign).toEqual([]);
});
