#!/usr/bin/env node
// A TCP proxy that can freeze, for tests of half-open connections. Plain node:net, no
// dependencies.
//
// Usage: node tcp-proxy.mjs --target-path /dir/.s.PGSQL.5432   (a Unix socket)
//        node tcp-proxy.mjs --target HOST:PORT
// It listens on 127.0.0.1 (any free port) for proxied connections, and on a second port for
// control. When both listen, exactly one line is written to stdout:
//   {"msg":"listening","address":"127.0.0.1:CONTROL_PORT","proxy":"127.0.0.1:PROXY_PORT"}
//
// Control API (HTTP, JSON answers):
//   GET  /control/info    -> {"proxy":"127.0.0.1:PORT","frozen":bool,"connections":N,"accepted":N}
//   POST /control/freeze  -> stop moving bytes in both directions on every connection, old and
//                            new; nothing is closed, so each side sees a silent peer (half-open)
//   POST /control/thaw    -> move bytes again (what was held back is delivered)
// SIGTERM / SIGINT: close everything and exit 0.
import http from 'node:http';
import net from 'node:net';

const args = { target: null, targetPath: null };
for (let i = 2; i < process.argv.length; i++) {
  if (process.argv[i] === '--target') args.target = process.argv[++i];
  else if (process.argv[i] === '--target-path') args.targetPath = process.argv[++i];
}
if (!args.target && !args.targetPath) {
  process.stderr.write('usage: tcp-proxy.mjs --target HOST:PORT | --target-path SOCKET\n');
  process.exit(2);
}

let frozen = false;
let accepted = 0;
const pairs = new Set();  // {client, upstream}

function connectUpstream() {
  if (args.targetPath) return net.connect({ path: args.targetPath });
  const at = args.target.lastIndexOf(':');
  return net.connect({ host: args.target.slice(0, at), port: Number(args.target.slice(at + 1)) });
}

// Pausing a socket stops reading from it, so nothing is forwarded and the kernel buffers fill.
function apply(pair) {
  for (const s of [pair.client, pair.upstream]) {
    if (frozen) s.pause();
    else s.resume();
  }
}

const proxy = net.createServer((client) => {
  accepted++;
  const upstream = connectUpstream();
  const pair = { client, upstream };
  pairs.add(pair);
  client.on('data', (d) => upstream.write(d));
  upstream.on('data', (d) => client.write(d));
  const close = () => {
    client.destroy();
    upstream.destroy();
    pairs.delete(pair);
  };
  client.on('close', close);
  upstream.on('close', close);
  client.on('error', close);
  upstream.on('error', close);
  apply(pair);
});

const control = http.createServer((req, res) => {
  const answer = (status, body) => {
    const text = JSON.stringify(body);
    res.writeHead(status, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(text),
    });
    res.end(text);
  };
  req.resume();
  req.on('end', () => {
    if (req.method === 'GET' && req.url === '/control/info') {
      const { port } = proxy.address();
      return answer(200, { proxy: `127.0.0.1:${port}`, frozen, connections: pairs.size, accepted });
    }
    if (req.method === 'POST' && (req.url === '/control/freeze' || req.url === '/control/thaw')) {
      frozen = req.url === '/control/freeze';
      for (const p of pairs) apply(p);
      return answer(200, { frozen, connections: pairs.size });
    }
    return answer(404, { error: 'unknown control request' });
  });
});

proxy.listen(0, '127.0.0.1', () => {
  control.listen(0, '127.0.0.1', () => {
    process.stdout.write(`${JSON.stringify({
      msg: 'listening',
      address: `127.0.0.1:${control.address().port}`,
      proxy: `127.0.0.1:${proxy.address().port}`,
    })}\n`);
  });
});

function shutdown() {
  for (const p of pairs) {
    p.client.destroy();
    p.upstream.destroy();
  }
  proxy.close();
  control.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
