// The documentation runs as written: the README's demo page (extracted from README.md) in a browser,
// and docs/TESTING-WITH-WEBRWKV.md's Playwright example (config and spec) as its own Playwright run
// against a fresh `webrwkv bundle`.
const { test, expect } = require('@playwright/test');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { execFileSync } = require('child_process');

const ROOT = path.join(__dirname, '..', '..');
const blocks = (file, lang) => [...fs.readFileSync(path.join(ROOT, file), 'utf8').matchAll(new RegExp('```' + lang + '\\n([\\s\\S]*?)```', 'g'))].map((m) => m[1]);

test("The README's demo page runs exactly as written", async ({ page, baseURL }) => {
  test.setTimeout(600_000); // the bundled model on SwiftShader: generous on a busy machine
  const html = blocks('README.md', 'html');
  expect(html.length).toBe(1);
  // served next to webrwkv.js, as the README says
  await page.route(`${baseURL}/demo.html`, (r) => r.fulfill({ contentType: 'text/html', body: html[0] }));
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  // count the engine calls in flight (the snippet itself stays as written)
  await page.addInitScript(() => {
    const W = window.Worker;
    window.__calls = new Set();
    window.Worker = class extends W {
      constructor(...a) {
        super(...a);
        this.addEventListener('message', (e) => { if (e.data.type === 'done' || e.data.type === 'error') window.__calls.delete(e.data.id); });
      }
      postMessage(m, ...rest) { if (m?.id) window.__calls.add(m.id); return super.postMessage(m, ...rest); }
    };
  });
  await page.goto('/demo.html');
  await page.waitForFunction(() => document.getElementById('out').textContent.includes('\n\nJuliet:') && window.__calls.size === 0,
    null, { timeout: 300_000 });
  const text = await page.locator('#out').textContent();
  expect(text).toMatch(/^ROMEO\.[\s\S]{4,}\n\nJuliet:/); // the model wrote on, then the chat reply came
  expect(errors).toEqual([]);
});

test('docs/TESTING-WITH-WEBRWKV.md: its Playwright example passes against a bundle', async () => {
  test.setTimeout(600_000);
  const [config, spec] = [blocks('docs/TESTING-WITH-WEBRWKV.md', 'js').find((b) => b.includes('defineConfig')),
    blocks('docs/TESTING-WITH-WEBRWKV.md', 'js').find((b) => b.includes("test('"))];
  expect(config && spec).toBeTruthy();
  const dir = path.join(os.tmpdir(), `webrwkv-testing-doc-${process.pid}`); // its own run: outside this run's test-results
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(path.join(dir, 'tests'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'playwright.config.js'), config);
  fs.writeFileSync(path.join(dir, 'tests', 'webrwkv.spec.js'), spec);
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules')); // @playwright/test, as a user has it
  execFileSync(path.join(ROOT, '.venv', 'bin', 'webrwkv'), ['bundle', path.join(dir, 'webrwkv-site')], { stdio: 'pipe' });
  let out;
  try {
    out = execFileSync(path.join(ROOT, 'node_modules', '.bin', 'playwright'), ['test'], {
      cwd: dir, encoding: 'utf8', timeout: 540_000, // a fresh run: none of this run's own Playwright settings
      env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(PW_|PLAYWRIGHT|TEST_|CI$)/.test(k))),
    });
  } catch (e) {
    throw new Error(`the example's run failed:\n${e.stdout}\n${e.stderr}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  expect(out).toMatch(/2 passed/);
});
