// A scripted stand-in for web/worker.js, served in its place by page.spec.js (page.route), so the
// page's own behaviour (layout, streaming, markdown, conversations, progress) is tested fast and
// deterministically without Pyodide. It speaks the worker protocol; the real worker is tested by
// every other spec. Its script comes from /__fake/config (JSON) that the test serves:
//   {replies: [[token texts...], ...] (one per generate call, the last repeats), tokenDelay: ms,
//    kernels: n (progress messages of the "kernels" phase), loadDelay: ms}
const post = (m) => self.postMessage(m);
let config = null, calls = 0, stop = false, loaded = null;
const prompts = [];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const handlers = {
  async init() {
    config = await (await fetch('/__fake/config', { cache: 'no-store' })).json();
    return { adapter: 'Fake adapter', features: [], limits: {} };
  },
  async load(id, { url }) {
    const progress = (p) => post({ id, type: 'progress', ...p });
    progress({ phase: 'header', text: 'Reading the model header…' });
    for (let i = 0; i <= 4; i++) { progress({ phase: 'weights', loaded: i * 250000, total: 1000000, mbps: 50, fromCache: false }); await sleep(20); }
    progress({ phase: 'finish', text: 'Preparing the GPU kernels…' });
    for (let i = 1; i <= (config.kernels || 0); i++) { await sleep(config.kernelDelay || 30); progress({ phase: 'kernels', done: i, total: config.kernels }); }
    await sleep(config.loadDelay || 0);
    loaded = { name: url.split('/').pop(), url, version: 'v7', n_layer: 2, n_embd: 64, n_head: 1, head_size: 64, vocab: 256,
      dim_ffn: 256, layout: 'official', dtype: 'fp16', adapter: 'Fake adapter', prefill_kernel: 'gemm', quant: 'none', weight_bytes: 1000000,
      card: config.card || null, cardError: '',
      load: { total: 1000000, fetched: 1000000, fromCache: 0, seconds: 2.0, streamSeconds: 0.02, phases: { header: 0.1, plan: 0.1, stream: 0.02, finish: 1.7 }, workers: 0, heapGrowth: 0, heapBytes: 0, pyPeak: 0 } };
    return loaded;
  },
  generate: (id, { prompt }) => reply(id, prompt),
  // The real worker formats a conversation in Python (ChatSession); the fake uses the default
  // User/Assistant layout so a test can read back exactly what the page sent.
  chat: (id, { messages }) => reply(id, transcript(messages)),
  count: (id, { text }) => (typeof text === 'string' ? text : transcript(text)).length,
  reset: () => null, save: () => null, restore: () => null, unload: () => { loaded = null; },
  stats: () => ({}), fakePrompts: () => prompts,
};

function transcript(messages) {
  const names = { user: 'User', assistant: 'Assistant' };
  const parts = messages.map((m) => (m.role === 'system' ? m.content : `${names[m.role]}: ${m.content}`));
  return `${parts.join('\n\n')}\n\nAssistant:`;
}

async function reply(id, prompt) {
  prompts.push(prompt);
  const replies = config.replies || [['Hello.']];
  const tokens = replies[Math.min(calls, replies.length - 1)];
  calls++;
  stop = false;
  let n = 0;
  for (const text of tokens) {
    if (stop) break;
    await sleep(config.tokenDelay || 0);
    post({ id, type: 'token', token: ++n, text });
  }
  const stopped = stop;
  return { prompt_tokens: String(prompt).length, completion_tokens: n, prefill_tps: 100, decode_tps: 10, py_share: 0.1,
    py_step_s: 0.001, stop_reason: stopped ? 'stopped' : 'stop', finish_reason: 'stop', ids: [] };
}

let chain = Promise.resolve();
self.onmessage = (ev) => {
  const msg = ev.data;
  if (msg.type === 'stop') { stop = true; return; }
  if (msg.type === 'cancelLoad') return;
  chain = chain.then(async () => {
    try {
      const h = handlers[msg.type];
      if (!h) throw new Error(`unknown message ${msg.type}`);
      post({ id: msg.id, type: 'done', result: await h(msg.id, msg) });
    } catch (e) {
      post({ id: msg.id, type: 'error', error: { kind: 'engine', message: String(e.message || e) } });
    }
  });
};
