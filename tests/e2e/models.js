// Test-only model hosting for the e2e specs: requests under /e2e-models/ (from the page or its
// worker) are answered here, with HTTP Range like a real model host, or deliberately without it.
const fs = require('fs');
const path = require('path');
const { execFileSync } = require('child_process');

const ROOT = path.join(__dirname, '..', '..');
const GOLDEN = path.join(ROOT, 'tests', 'golden');
const PREFIX = '/e2e-models/';

// name -> {data: Buffer, etag, range (default true)}; log gets one entry per request (host: the URL's).
async function hostModels(page, files, log = []) {
  await page.route(`**${PREFIX}**`, async (route) => {
    const req = route.request();
    const name = decodeURIComponent(new URL(req.url()).pathname.slice(PREFIX.length));
    const f = files[name];
    const headers = { 'Access-Control-Allow-Origin': '*', 'Access-Control-Expose-Headers': 'Content-Range, ETag',
      'Cache-Control': 'no-cache' };
    const range = req.headers()['range'] || null;
    const host = new URL(req.url()).host;
    if (!f) {
      log.push({ name, range, status: 404, bytes: 0, host });
      return route.fulfill({ status: 404, headers, body: 'not found' });
    }
    const data = f.data;
    headers['ETag'] = f.etag || '"v1"';
    headers['Content-Type'] = 'application/octet-stream';
    let status = 200, body = data;
    const m = range && f.range !== false ? /^bytes=(\d+)-(\d*)$/.exec(range) : null;
    if (m) {
      const start = Number(m[1]);
      const end = Math.min(m[2] ? Number(m[2]) + 1 : data.length, data.length);
      if (start >= data.length) {
        log.push({ name, range, status: 416, bytes: 0, host });
        return route.fulfill({ status: 416, headers: { ...headers, 'Content-Range': `bytes */${data.length}` }, body: '' });
      }
      status = 206;
      body = data.subarray(start, end);
      headers['Content-Range'] = `bytes ${start}-${end - 1}/${data.length}`;
    } else {
      headers['Accept-Ranges'] = f.range === false ? 'none' : 'bytes';
    }
    log.push({ name, range, status, bytes: body.length, host });
    return route.fulfill({ status, headers, body });
  });
  return log;
}

const golden = (name) => ({ data: fs.readFileSync(path.join(GOLDEN, name)) });
const url = (baseURL, name) => `${baseURL}${PREFIX}${name}`;

// A bigger v7 model (vocab 65536, ~17 MB) made from the golden one, to measure memory use.
function bigModel() {
  const out = path.join(ROOT, 'test-results', 'e2e-big-v7.st');
  if (!fs.existsSync(out)) {
    fs.mkdirSync(path.dirname(out), { recursive: true });
    const py = `
import sys, numpy as np
from webrwkv.models import load_weights
from webrwkv.safetensors import write_safetensors
info, w = load_weights(sys.argv[1])
rng = np.random.default_rng(0)
for n in ("emb.weight", "head.weight"):
    w[n] = (rng.standard_normal((65536, info.n_embd)) * 0.1).astype(np.float32)
for n in [k for k in w if k.endswith("att.r_k")]:
    w[n] = w[n].reshape(info.n_head, info.head_size)
write_safetensors(sys.argv[2], w, {"layout": "converted"}, dtype="fp16")
`;
    execFileSync(path.join(ROOT, '.venv', 'bin', 'python'), ['-c', py, path.join(GOLDEN, 'v7-converted.st'), out]);
  }
  return { data: fs.readFileSync(out) };
}

// Start an engine in the page (the embedding API), keep it as window.__engine.
async function startEngine(page, modelUrl) {
  return page.evaluate(async (u) => {
    const { createEngine } = await import('/webrwkv.js');
    window.__progress = [];
    window.__engine = await createEngine({ model: u, onProgress: (p) => window.__progress.push(p) });
    return window.__engine.model;
  }, modelUrl);
}

// Greedy (or sampled) generation from token ids; returns {ids, stats}.
async function generateIds(page, promptIds, opts) {
  return page.evaluate(async ([p, o]) => {
    const ids = [];
    for await (const t of window.__engine.generate(p, o)) ids.push(t.token);
    return { ids, stats: window.__engine.stats };
  }, [promptIds, opts]);
}

module.exports = { hostModels, golden, url, bigModel, startEngine, generateIds, GOLDEN, PREFIX };
