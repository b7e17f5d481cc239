// A real static web server for the bundle tests: Debian's nginx, run as the current user on high
// ports with its files under test-results/ (no root, no system service), serving a `webrwkv bundle`.
const fs = require('fs');
const path = require('path');
const net = require('net');
const { spawn, execFileSync } = require('child_process');

const ROOT = path.join(__dirname, '..', '..');
const NGINX = ['/usr/sbin/nginx', '/usr/bin/nginx'].find((p) => fs.existsSync(p));

// `webrwkv bundle OUT --force --model ...` as a user runs it.
function bundle(out, models) {
  execFileSync(path.join(ROOT, '.venv', 'bin', 'webrwkv'), ['bundle', out, '--force', ...models.flatMap((m) => ['--model', m])],
    { cwd: ROOT, stdio: 'pipe', timeout: 300_000 });
  return out;
}

async function waitForPort(port, ms = 15_000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => { s.end(); resolve(true); });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`nginx did not listen on ${port}`);
}

// sites: [{port, locations: [{prefix, dir, cors}]}]; returns {stop()}.
async function startNginx(name, sites) {
  if (!NGINX) throw new Error('nginx is missing: tools/setup.sh installs it (Debian package nginx)');
  const dir = path.join(ROOT, 'test-results', `nginx-${name}`);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(path.join(dir, 'tmp'), { recursive: true });
  const cors = 'add_header Access-Control-Allow-Origin "*" always;\n' +
    '      add_header Access-Control-Expose-Headers "Content-Range, Content-Length, ETag, Accept-Ranges" always;';
  const servers = sites.map((s) => `
  server {
    listen 127.0.0.1:${s.port};
    ${s.locations.map((l) => `location ${l.prefix} {
      alias ${path.resolve(l.dir)}/;
      ${l.cors ? cors : ''}
    }`).join('\n    ')}
  }`).join('\n');
  const user = process.getuid && process.getuid() === 0 ? 'user root root;' : ''; // workers read our files
  const conf = `${user}
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 256; }
http {
  include /etc/nginx/mime.types;
  types { text/javascript mjs; }
  default_type application/octet-stream;
  access_log ${dir}/access.log;
  client_body_temp_path ${dir}/tmp/body;
  proxy_temp_path ${dir}/tmp/proxy;
  fastcgi_temp_path ${dir}/tmp/fastcgi;
  uwsgi_temp_path ${dir}/tmp/uwsgi;
  scgi_temp_path ${dir}/tmp/scgi;
  sendfile on;
${servers}
}
`;
  fs.writeFileSync(path.join(dir, 'nginx.conf'), conf);
  const proc = spawn(NGINX, ['-p', dir, '-e', path.join(dir, 'error.log'), '-c', path.join(dir, 'nginx.conf'), '-g', 'daemon off;'],
    { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr.on('data', (d) => (err += d));
  try {
    for (const s of sites) await waitForPort(s.port);
  } catch (e) {
    proc.kill('SIGTERM');
    throw new Error(`${e.message}: ${err}${fs.existsSync(path.join(dir, 'error.log')) ? fs.readFileSync(path.join(dir, 'error.log'), 'utf8') : ''}`);
  }
  return {
    accessLog: () => fs.readFileSync(path.join(dir, 'access.log'), 'utf8'),
    stop: () => new Promise((resolve) => { proc.once('exit', resolve); proc.kill('SIGQUIT'); setTimeout(() => proc.kill('SIGKILL'), 5000); }),
  };
}

module.exports = { bundle, startNginx, ROOT };
