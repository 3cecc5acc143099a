#!/usr/bin/env node
// Fault-injecting fake OAuth token endpoint for tokend tests. Plain node:http, no dependencies.
//
// Usage: node fake-token-endpoint.mjs [--port N] [--tls-cert FILE --tls-key FILE]
//   (default port 0 = any free port; binds 127.0.0.1; with a certificate it serves HTTPS)
// When listening, exactly one line is written to stdout:
//   {"msg":"listening","address":"127.0.0.1:PORT"}
// SIGTERM / SIGINT: close everything and exit 0.
//
// Token requests: any method on /token or on any path ending in /token, /whoami (a canary
// endpoint) or /hook (a webhook receiver); run a separate instance for each role so the queues
// stay apart. Each one takes the next
// scripted step from a FIFO queue at arrival; with an empty queue the default answer is
//   200 {"access_token":"fake-at-<n>","refresh_token":"fake-rt-<n>","token_type":"Bearer","expires_in":3600}
// with n = 1, 2, ... counting default(-like) responses since the last reset.
//
// Script step (JSON object, all fields optional):
//   status               HTTP status (default 200)
//   headers              object of response headers (override the generated ones)
//   json                 object -> body, content-type application/json
//   body                 raw string body; content-type from headers, else text/plain
//   body_bytes           N -> JSON-looking body {"access_token":"aaa...a"} of exactly N bytes
//   default              true -> the default counter-based token body (same counter as default)
//   delay_ms             wait after reading the request (request already recorded) before answering
//   stall_before_read_ms do not read the request for this long; it is recorded only afterwards,
//                        and never if the client went away during the stall
//   drop                 after reading+recording, destroy the socket without any response
//   truncate             true or a byte count: send status + headers with a Content-Length of the
//                        full body, then only part of it (default: the first half, or for the
//                        built-in body '{"access_token":"x","refr'), then destroy the socket
//   never_answer         read+record, never respond; the socket stays open until the client leaves
//   hold                 a name: after reading+recording (and delay_ms), hold the answer until
//                        POST /control/release {"name"} (released names stay released until reset)
//   repeat               how many requests this step answers (default 1)
//   label                free-form string copied into the recorded request
// A step with no body field (json/body/body_bytes/default) and status 200 answers the default
// token body; with another status it answers an empty body.
//
// Control API (JSON):
//   POST /control/script  {"steps":[...]} -> {"queued": <steps now pending>, "pending_responses": <sum of repeats>}
//   POST /control/reset   -> {} clears queue, recorded requests, counters and holds
//   POST /control/release {"name":"..."} -> {"released": <answers let go>} releases a hold
//   GET  /control/holds   -> {"held": <answers being held now>}
//   GET  /control/requests -> {"count": <token requests received>, "processed": <recorded>,
//                              "queued": <steps pending>, "items":[{"seq","method","path","headers",
//                              "body","at","step","label"}]}
//        at = wall-clock ms since the epoch (fractional); step = 0-based index of the consumed
//        script step (counting every step appended since the last reset), null for default.

import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import { performance } from 'node:perf_hooks';

function usage(msg) {
  process.stderr.write(`fake-token-endpoint: ${msg}\nusage: node fake-token-endpoint.mjs [--port N]\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const out = { port: 0 };
  for (let i = 0; i < argv.length; i += 1) {
    let arg = argv[i];
    let value;
    const eq = arg.indexOf('=');
    if (arg.startsWith('--') && eq !== -1) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    if (arg === '--tls-cert' || arg === '--tls-key') {
      if (value === undefined) {
        i += 1;
        if (i >= argv.length) usage(`missing value for ${arg}`);
        value = argv[i];
      }
      out[arg === '--tls-cert' ? 'tlsCert' : 'tlsKey'] = value;
    } else if (arg === '--port') {
      if (value === undefined) {
        i += 1;
        if (i >= argv.length) usage('missing value for --port');
        value = argv[i];
      }
      if (!/^\d+$/.test(value) || Number(value) > 65535) usage(`invalid --port ${value}`);
      out.port = Number(value);
    } else {
      usage(arg === '-h' || arg === '--help' ? 'help' : `unknown argument ${arg}`);
    }
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const MAX_CONTROL_BODY = 16 * 1024 * 1024;
const MAX_TOKEN_BODY = 16 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------
let generation = 0; // bumped by reset; in-flight requests of an older generation are not recorded
let queue = []; // [{ index, spec, remaining }]
let nextStepIndex = 0;
let received = 0;
let seq = 0;
let defaultCounter = 0;
let recorded = [];
// Holds: name -> list of resolve functions of answers waiting; released names pass at once.
let holds = new Map();
let releasedHolds = new Set();
let heldNow = 0;

function resetState() {
  generation += 1;
  queue = [];
  nextStepIndex = 0;
  received = 0;
  seq = 0;
  defaultCounter = 0;
  recorded = [];
  for (const waiters of holds.values()) waiters.forEach((w) => w());
  holds = new Map();
  releasedHolds = new Set();
}

const STEP_KEYS = new Set([
  'status', 'headers', 'json', 'body', 'body_bytes', 'default', 'delay_ms', 'stall_before_read_ms',
  'drop', 'truncate', 'never_answer', 'repeat', 'label', 'hold',
]);

function waitForRelease(name) {
  if (releasedHolds.has(name)) return Promise.resolve();
  return new Promise((resolve) => {
    heldNow += 1;
    if (!holds.has(name)) holds.set(name, []);
    holds.get(name).push(() => {
      heldNow -= 1;
      resolve();
    });
  });
}

function isNonNegInt(v) { return Number.isInteger(v) && v >= 0; }

function validateStep(step, i) {
  const where = `steps[${i}]`;
  if (step === null || typeof step !== 'object' || Array.isArray(step)) throw new Error(`${where} must be an object`);
  for (const k of Object.keys(step)) {
    if (!STEP_KEYS.has(k)) throw new Error(`${where}: unknown field ${k}`);
  }
  if ('status' in step && !(Number.isInteger(step.status) && step.status >= 200 && step.status <= 599)) {
    throw new Error(`${where}.status must be an integer in [200, 599]`);
  }
  if ('headers' in step) {
    if (step.headers === null || typeof step.headers !== 'object' || Array.isArray(step.headers)) {
      throw new Error(`${where}.headers must be an object`);
    }
    for (const [k, v] of Object.entries(step.headers)) {
      if (typeof v !== 'string' && typeof v !== 'number') throw new Error(`${where}.headers.${k} must be a string or number`);
    }
  }
  const bodyKinds = ['json', 'body', 'body_bytes', 'default'].filter((k) => k in step && step[k] !== false);
  if (bodyKinds.length > 1) throw new Error(`${where}: only one of json, body, body_bytes, default`);
  if ('body' in step && typeof step.body !== 'string') throw new Error(`${where}.body must be a string`);
  if ('body_bytes' in step && !isNonNegInt(step.body_bytes)) throw new Error(`${where}.body_bytes must be a non-negative integer`);
  for (const k of ['delay_ms', 'stall_before_read_ms']) {
    if (k in step && !(typeof step[k] === 'number' && step[k] >= 0 && Number.isFinite(step[k]))) {
      throw new Error(`${where}.${k} must be a non-negative number`);
    }
  }
  for (const k of ['drop', 'never_answer', 'default']) {
    if (k in step && typeof step[k] !== 'boolean') throw new Error(`${where}.${k} must be a boolean`);
  }
  if ('truncate' in step && !(typeof step.truncate === 'boolean' || isNonNegInt(step.truncate))) {
    throw new Error(`${where}.truncate must be a boolean or a byte count`);
  }
  const terminal = ['drop', 'never_answer', 'truncate'].filter((k) => step[k]);
  if (terminal.length > 1) throw new Error(`${where}: only one of drop, never_answer, truncate`);
  if ('repeat' in step && !(Number.isInteger(step.repeat) && step.repeat >= 1)) {
    throw new Error(`${where}.repeat must be an integer >= 1`);
  }
  if ('label' in step && typeof step.label !== 'string') throw new Error(`${where}.label must be a string`);
  if ('hold' in step && (typeof step.hold !== 'string' || step.hold === '')) throw new Error(`${where}.hold must be a non-empty string`);
}

function takeStep() {
  if (queue.length === 0) return null;
  const head = queue[0];
  head.remaining -= 1;
  if (head.remaining <= 0) queue.shift();
  return { index: head.index, spec: head.spec };
}

function pendingResponses() {
  return queue.reduce((n, s) => n + s.remaining, 0);
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------
function sendJson(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
}

// Resolves with the body string, or null if the client went away before the body was complete.
function readBody(req, limit) {
  return new Promise((resolve) => {
    const chunks = [];
    let size = 0;
    let done = false;
    const finish = (v) => {
      if (!done) {
        done = true;
        resolve(v);
      }
    };
    req.on('data', (c) => {
      size += c.length;
      if (size > limit) {
        req.destroy();
        finish(null);
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => finish(Buffer.concat(chunks).toString('utf8')));
    req.on('close', () => finish(req.complete ? Buffer.concat(chunks).toString('utf8') : null));
    req.on('error', () => finish(null));
  });
}

// Sleep for ms; resolves early (with false) if the connection closes first. True = slept fully.
function sleepUnlessGone(res, ms) {
  if (res.destroyed || res.socket?.destroyed) return Promise.resolve(false);
  return new Promise((resolve) => {
    const onClose = () => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      res.off('close', onClose);
      resolve(true);
    }, ms);
    res.once('close', onClose);
  });
}

function defaultBody(stale) {
  if (stale) {
    return JSON.stringify({
      access_token: 'fake-at-stale', refresh_token: 'fake-rt-stale', token_type: 'Bearer', expires_in: 3600,
    });
  }
  defaultCounter += 1;
  const n = defaultCounter;
  return JSON.stringify({
    access_token: `fake-at-${n}`, refresh_token: `fake-rt-${n}`, token_type: 'Bearer', expires_in: 3600,
  });
}

function paddedJsonBody(n) {
  const prefix = '{"access_token":"';
  const suffix = '"}';
  if (n < prefix.length + suffix.length) return Buffer.alloc(n, 'a');
  return Buffer.from(prefix + 'a'.repeat(n - prefix.length - suffix.length) + suffix);
}

const TRUNCATE_FULL = '{"access_token":"x","refresh_token":"y","token_type":"Bearer","expires_in":3600}';
const TRUNCATE_PARTIAL_LEN = '{"access_token":"x","refr'.length;

// -> { body: Buffer, contentType }
function buildBody(spec, stale) {
  if (!spec) return { body: Buffer.from(defaultBody(stale)), contentType: 'application/json' };
  if ('json' in spec) return { body: Buffer.from(JSON.stringify(spec.json)), contentType: 'application/json' };
  if ('body' in spec) return { body: Buffer.from(spec.body, 'utf8'), contentType: 'text/plain' };
  if ('body_bytes' in spec) return { body: paddedJsonBody(spec.body_bytes), contentType: 'application/json' };
  const status = spec.status ?? 200;
  if (spec.default || status === 200) {
    return { body: Buffer.from(defaultBody(stale)), contentType: 'application/json' };
  }
  return { body: Buffer.alloc(0), contentType: null };
}

function headersFor(spec, contentType, length) {
  const h = {};
  if (contentType) h['content-type'] = contentType;
  h['content-length'] = String(length);
  h['cache-control'] = 'no-store';
  for (const [k, v] of Object.entries(spec?.headers || {})) h[k.toLowerCase()] = String(v);
  return h;
}

// ---------------------------------------------------------------------------------------------
// Token requests
// ---------------------------------------------------------------------------------------------
async function handleToken(req, res, path) {
  const gen = generation;
  received += 1;
  const taken = takeStep();
  const spec = taken?.spec ?? null;

  if (spec?.stall_before_read_ms) {
    const stillThere = await sleepUnlessGone(res, spec.stall_before_read_ms);
    if (!stillThere || res.destroyed || req.socket.destroyed) return; // never processed
  }

  const body = await readBody(req, MAX_TOKEN_BODY);
  if (body === null) return; // client went away mid-body: not processed

  const stale = gen !== generation;
  if (!stale) {
    seq += 1;
    recorded.push({
      seq,
      method: req.method,
      path,
      headers: req.headers,
      body,
      at: performance.timeOrigin + performance.now(),
      step: taken ? taken.index : null,
      label: spec?.label ?? null,
    });
  }

  if (spec?.delay_ms) {
    const stillThere = await sleepUnlessGone(res, spec.delay_ms);
    if (!stillThere) return;
  }

  if (spec?.hold) await waitForRelease(spec.hold);

  if (spec?.never_answer) return; // socket stays open until the client goes away
  if (spec?.drop) {
    req.socket.destroy();
    return;
  }

  const status = spec?.status ?? 200;
  if (spec?.truncate) {
    let full;
    let contentType;
    let partialLen;
    if (['json', 'body', 'body_bytes'].some((k) => k in spec)) {
      ({ body: full, contentType } = buildBody(spec, stale));
      partialLen = Math.floor(full.length / 2);
    } else {
      full = Buffer.from(TRUNCATE_FULL);
      contentType = 'application/json';
      partialLen = TRUNCATE_PARTIAL_LEN;
    }
    if (typeof spec.truncate === 'number') partialLen = spec.truncate;
    partialLen = Math.max(0, Math.min(partialLen, full.length - 1));
    res.writeHead(status, headersFor(spec, contentType, full.length));
    res.flushHeaders();
    const partial = full.subarray(0, partialLen);
    if (partial.length === 0) {
      setImmediate(() => res.socket?.destroy());
    } else {
      res.write(partial, () => res.socket?.destroy());
    }
    return;
  }

  const { body: out, contentType } = buildBody(spec, stale);
  res.writeHead(status, headersFor(spec, contentType, out.length));
  res.end(out);
}

// ---------------------------------------------------------------------------------------------
// Control API
// ---------------------------------------------------------------------------------------------
async function handleControl(req, res, path) {
  const raw = await readBody(req, MAX_CONTROL_BODY);
  if (raw === null) return;
  const route = `${req.method} ${path}`;
  switch (route) {
    case 'POST /control/script': {
      let parsed;
      try {
        parsed = JSON.parse(raw);
      } catch {
        sendJson(res, 400, { error: 'body must be JSON' });
        return;
      }
      const steps = parsed?.steps;
      if (!Array.isArray(steps)) {
        sendJson(res, 400, { error: 'body must be {"steps":[...]}' });
        return;
      }
      try {
        steps.forEach(validateStep);
      } catch (err) {
        sendJson(res, 400, { error: err.message });
        return;
      }
      for (const spec of steps) {
        queue.push({ index: nextStepIndex, spec, remaining: spec.repeat ?? 1 });
        nextStepIndex += 1;
      }
      sendJson(res, 200, { queued: queue.length, pending_responses: pendingResponses() });
      return;
    }
    case 'POST /control/release': {
      let name;
      try {
        name = JSON.parse(raw)?.name;
      } catch {
        name = undefined;
      }
      if (typeof name !== 'string' || name === '') {
        sendJson(res, 400, { error: 'body must be {"name":"..."}' });
        return;
      }
      releasedHolds.add(name);
      const waiters = holds.get(name) || [];
      holds.delete(name);
      waiters.forEach((w) => w());
      sendJson(res, 200, { released: waiters.length });
      return;
    }
    case 'GET /control/holds':
      sendJson(res, 200, { held: heldNow });
      return;
    case 'POST /control/reset':
      resetState();
      sendJson(res, 200, {});
      return;
    case 'GET /control/requests':
      sendJson(res, 200, {
        count: received,
        processed: recorded.length,
        queued: queue.length,
        items: recorded,
      });
      return;
    default:
      sendJson(res, 404, { error: `no such control endpoint: ${route}` });
  }
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------
const tlsOptions = args.tlsCert
  ? { cert: fs.readFileSync(args.tlsCert), key: fs.readFileSync(args.tlsKey) }
  : null;
const server = (tlsOptions ? (h) => https.createServer(tlsOptions, h) : (h) => http.createServer(h))((req, res) => {
  let path;
  try {
    path = new URL(req.url, 'http://127.0.0.1').pathname;
  } catch {
    sendJson(res, 400, { error: 'bad request target' });
    return;
  }
  let work;
  if (path === '/token' || path.endsWith('/token') || path.endsWith('/whoami') ||
      path.endsWith('/hook')) {
    work = handleToken(req, res, path);
  } else if (path.startsWith('/control/')) {
    work = handleControl(req, res, path);
  } else {
    work = readBody(req, MAX_CONTROL_BODY).then((b) => {
      if (b !== null) sendJson(res, 404, { error: 'not_found' });
    });
  }
  work.catch((err) => {
    process.stderr.write(`fake-token-endpoint: ${err?.stack || err}\n`);
    if (!res.headersSent) sendJson(res, 500, { error: 'internal error in fake-token-endpoint' });
    else res.destroy();
  });
});
server.keepAliveTimeout = 60_000;
server.headersTimeout = 65_000;
server.requestTimeout = 0;

server.on('error', (err) => {
  process.stderr.write(`fake-token-endpoint: ${err.message}\n`);
  process.exit(1);
});

server.listen(args.port, '127.0.0.1', () => {
  const { port } = server.address();
  process.stdout.write(`${JSON.stringify({ msg: 'listening', address: `127.0.0.1:${port}` })}\n`);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
