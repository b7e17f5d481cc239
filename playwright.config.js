// Playwright: headless system Chromium with WebGPU (SwiftShader on CPU-only machines),
// against the project's own server. Browsers are never downloaded.
const { defineConfig } = require('@playwright/test');

const PORT = Number(process.env.E2E_PORT || 8766);

module.exports = defineConfig({
  testDir: 'tests/e2e',
  outputDir: 'test-results',
  timeout: 300_000, // SwiftShader is slow
  expect: { timeout: 60_000 },
  workers: 1,
  fullyParallel: false,
  forbidOnly: !!process.env.CI,
  retries: 0,
  reporter: [['list']],
  use: {
    baseURL: `http://127.0.0.1:${PORT}`,
    browserName: 'chromium',
    headless: true,
    screenshot: 'only-on-failure',
    trace: 'retain-on-failure',
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
      // --enable-features=Vulkan was tried: SwiftShader stays the adapter and speed is unchanged.
      args: [
        '--no-sandbox',
        '--enable-unsafe-webgpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--no-first-run',
      ],
    },
  },
  webServer: {
    command: `.venv/bin/python -m webrwkv serve --port ${PORT}`,
    url: `http://127.0.0.1:${PORT}/test/smoke.html`,
    reuseExistingServer: !process.env.CI,
    timeout: 120_000,
    stdout: 'ignore',
    stderr: 'pipe',
  },
});
