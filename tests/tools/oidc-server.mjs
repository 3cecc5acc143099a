#!/usr/bin/env node
// Test-only OAuth 2.0 authorization server for tokend, built on oidc-provider 8.8.1 and
// configured to behave like Airtable's OAuth (confidential client, client_secret_basic only,
// PKCE S256 required on authorize, refresh-token rotation on every refresh with reuse detection).
//
// Usage: node oidc-server.mjs [--port N] [--redirect-uri URL] [--auto-consent]
//   --port          TCP port on 127.0.0.1 (default 0 = any free port)
//   --auto-consent  no login or consent page: every authorization request is granted at once
//                   for account user-1 (authorize -> interaction -> resume -> redirect_uri, all
//                   HTTP redirects), like a provider where the user is signed in and consented
//   --redirect-uri  the single registered redirect URI of the client
//                   (default http://127.0.0.1:9/oauth/callback)
//
// When listening, exactly one JSON line is written to stdout:
//   {"msg":"listening","address":"127.0.0.1:PORT","issuer":"http://127.0.0.1:PORT"}
// Nothing else is written to stdout (oidc-provider notices are redirected to stderr).
// SIGTERM / SIGINT: close the server and exit 0.
//
// Routes (issuer http://127.0.0.1:PORT, oidc-provider default route names):
//   POST /token                             token endpoint (authorization_code, refresh_token)
//   GET  /auth                              authorization endpoint (response_type=code, PKCE S256 required)
//   GET|POST /interaction/:uid[/login|/confirm|/abort]
//                                           dev interactions (login form: any login/password;
//                                           consent form grants all requested scopes)
//   POST /request                           pushed authorization requests
//   GET  /jwks, GET|POST /me (userinfo), /session/end,
//   GET  /.well-known/openid-configuration  discovery
// Test-only control endpoints (plain node:http handler in front of provider.callback()):
//   POST /test/grants         {"count":N,"account"?,"scope"?} -> {"items":[{"grant_id","refresh_token","access_token"}]}
//   GET  /test/stats          refresh_token grant counters
//   POST /test/reset-stats    zero the counters -> {}
//   POST /test/revoke         {"grant_id":"..."} -> {} (grant + all its tokens removed)
//   GET  /test/refresh-token?value=<token> -> {"exists","consumed","grant_id"} (read-only)
//   POST /test/answer-delay   {"ms":N,"count"?:K} -> {} the next K token endpoint requests (all
//                             while count is absent; ms 0 disarms) are processed at once (a
//                             refresh rotates) but their answers are held N ms before sending;
//                             /test/stats reports "held_answers" being held now

import * as http from 'node:http';
import * as crypto from 'node:crypto';

// oidc-provider prints its "NOTICE"s with console.info (stdout) and warnings with console.warn.
// stdout is reserved for the single "listening" line, so route everything to stderr, and drop
// the warning about devInteractions that this test server enables on purpose.
console.info = (...args) => console.error(...args);
console.log = (...args) => console.error(...args);
{
  const origWarn = console.warn.bind(console);
  console.warn = (...args) => {
    const first = String(args[0] ?? '');
    if (first.includes('devInteractions is enabled')) return;
    origWarn(...args);
  };
}

const { default: Provider, errors } = await import('oidc-provider');

// ---------------------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------------------
function usage(msg) {
  process.stderr.write(`oidc-server: ${msg}\nusage: node oidc-server.mjs [--port N] [--redirect-uri URL]\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const out = { port: 0, redirectUri: 'http://127.0.0.1:9/oauth/callback', autoConsent: false };
  for (let i = 0; i < argv.length; i += 1) {
    let arg = argv[i];
    let value;
    const eq = arg.indexOf('=');
    if (arg.startsWith('--') && eq !== -1) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    const next = () => {
      if (value !== undefined) return value;
      i += 1;
      if (i >= argv.length) usage(`missing value for ${arg}`);
      return argv[i];
    };
    switch (arg) {
      case '--port': {
        const v = next();
        if (!/^\d+$/.test(v) || Number(v) > 65535) usage(`invalid --port ${v}`);
        out.port = Number(v);
        break;
      }
      case '--redirect-uri': {
        const v = next();
        try {
          // eslint-disable-next-line no-new
          new URL(v);
        } catch {
          usage(`invalid --redirect-uri ${v}`);
        }
        out.redirectUri = v;
        break;
      }
      case '--auto-consent':
        out.autoConsent = true;
        break;
      case '-h':
      case '--help':
        usage('help');
        break;
      default:
        usage(`unknown argument ${arg}`);
    }
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));

const CLIENT_ID = 'tokend-test';
const CLIENT_SECRET = 'tokend-test-secret';
const DEFAULT_ACCOUNT = 'user-1';
const DEFAULT_SCOPE = 'openid offline_access data.records:read';
const MAX_MINT = 100000;
const MAX_CONTROL_BODY = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Unbounded in-memory adapter (one Map per model name). Never evicts because of count; entries
// past their expiresIn (+ grace) are dropped lazily when looked up. No timers.
// ---------------------------------------------------------------------------------------------
const EXPIRY_GRACE_MS = 10_000;
const STORES = new Map();
// refresh token value -> grantId; kept even after the token is destroyed/revoked so that
// /test/stats can attribute failed refreshes to a grant. Never consulted by the provider.
const refreshTokenGrantIndex = new Map();

function storeFor(name) {
  let s = STORES.get(name);
  if (!s) {
    s = {
      items: new Map(), // id -> { payload, expiresAt }
      byGrant: new Map(), // grantId -> Set<id>
      byUid: new Map(), // Session uid -> id
      byUserCode: new Map(), // userCode -> id
    };
    STORES.set(name, s);
  }
  return s;
}

function removeEntry(s, id) {
  const e = s.items.get(id);
  if (!e) return false;
  s.items.delete(id);
  const { grantId, uid, userCode } = e.payload;
  if (grantId) {
    const set = s.byGrant.get(grantId);
    if (set) {
      set.delete(id);
      if (set.size === 0) s.byGrant.delete(grantId);
    }
  }
  if (uid && s.byUid.get(uid) === id) s.byUid.delete(uid);
  if (userCode && s.byUserCode.get(userCode) === id) s.byUserCode.delete(userCode);
  return true;
}

function liveEntry(s, id) {
  const e = s.items.get(id);
  if (!e) return undefined;
  if (e.expiresAt <= Date.now()) {
    removeEntry(s, id);
    return undefined;
  }
  return e;
}

// Models whose consume() is made atomic: consuming an already-consumed (or vanished) token
// fails with invalid_grant and revokes the grant, like the provider's own reuse detection.
const ATOMIC_CONSUME = new Map([
  ['RefreshToken', 'refresh token'],
  ['AuthorizationCode', 'authorization code'],
]);

function revokeGrantEverywhere(grantId) {
  let found = false;
  for (const [name, s] of STORES) {
    if (name === 'Grant') continue;
    const ids = s.byGrant.get(grantId);
    if (ids) {
      for (const id of [...ids]) found = removeEntry(s, id) || found;
      s.byGrant.delete(grantId);
    }
  }
  found = removeEntry(storeFor('Grant'), grantId) || found;
  return found;
}

class UnboundedMemoryAdapter {
  constructor(name) {
    this.name = name;
    this.s = storeFor(name);
  }

  async upsert(id, payload, expiresIn) {
    const { s } = this;
    removeEntry(s, id);
    const expiresAt = typeof expiresIn === 'number' && expiresIn > 0
      ? Date.now() + expiresIn * 1000 + EXPIRY_GRACE_MS
      : Infinity;
    s.items.set(id, { payload, expiresAt });
    if (payload.grantId) {
      let set = s.byGrant.get(payload.grantId);
      if (!set) {
        set = new Set();
        s.byGrant.set(payload.grantId, set);
      }
      set.add(id);
      if (this.name === 'RefreshToken') refreshTokenGrantIndex.set(id, payload.grantId);
    }
    if (this.name === 'Session' && payload.uid) s.byUid.set(payload.uid, id);
    if (payload.userCode) s.byUserCode.set(payload.userCode, id);
  }

  async find(id) {
    const e = liveEntry(this.s, id);
    return e ? { ...e.payload } : undefined;
  }

  async findByUid(uid) {
    const id = this.s.byUid.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = this.s.byUserCode.get(userCode);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const e = liveEntry(this.s, id);
    const what = ATOMIC_CONSUME.get(this.name);
    if (what) {
      if (!e) throw new errors.InvalidGrant(`${what} not found`);
      if (e.payload.consumed) {
        if (e.payload.grantId) revokeGrantEverywhere(e.payload.grantId);
        removeEntry(this.s, id);
        throw new errors.InvalidGrant(`${what} already used`);
      }
    }
    if (e) e.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    removeEntry(this.s, id);
  }

  async revokeByGrantId(grantId) {
    const ids = this.s.byGrant.get(grantId);
    if (!ids) return;
    for (const id of [...ids]) removeEntry(this.s, id);
    this.s.byGrant.delete(grantId);
  }
}

// ---------------------------------------------------------------------------------------------
// Provider configuration
// ---------------------------------------------------------------------------------------------
const DAY = 24 * 60 * 60;
const signingKey = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 })
  .privateKey.export({ format: 'jwk' });
signingKey.kid = 'tokend-test-rs256';
signingKey.use = 'sig';
signingKey.alg = 'RS256';

// Airtable-like scope names (all treated as plain scopes; resource indicators are disabled).
const SCOPES = [
  'openid',
  'offline_access',
  'data.records:read',
  'data.records:write',
  'data.recordComments:read',
  'data.recordComments:write',
  'schema.bases:read',
  'schema.bases:write',
  'webhook:manage',
  'block:manage',
  'user.email:read',
];

function buildConfiguration() {
  return {
    adapter: UnboundedMemoryAdapter,
    clients: [{
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: [args.redirectUri],
    }],
    // Server-wide only client_secret_basic: the token endpoint then does not even accept a
    // client_secret body parameter, so a client_secret_post attempt (client_id + client_secret
    // in the body) fails with 401 invalid_client. (With the default list oidc-provider accepts
    // either method for a client_secret_basic client.)
    clientAuthMethods: ['client_secret_basic'],
    cookies: { keys: ['tokend-test-cookie-key-1'] },
    jwks: { keys: [signingKey] },
    scopes: SCOPES,
    findAccount(ctx, id) {
      return {
        accountId: id,
        async claims() { return { sub: id }; },
      };
    },
    features: {
      devInteractions: { enabled: true },
      resourceIndicators: { enabled: false },
      rpInitiatedLogout: { enabled: false },
      introspection: { enabled: false },
      revocation: { enabled: false },
    },
    pkce: {
      methods: ['S256'],
      required: () => true,
    },
    // Rotate on every refresh. With rotation on, presenting an already-consumed refresh token
    // makes the refresh_token grant destroy it and revoke the whole grant (revokeGrantPolicy
    // defaults to true), answering 400 invalid_grant "refresh token already used".
    rotateRefreshToken: true,
    issueRefreshToken: async () => true,
    expiresWithSession: async () => false,
    clientBasedCORS: () => false,
    ttl: {
      AccessToken: 60,
      AuthorizationCode: 60,
      IdToken: 60 * 60,
      RefreshToken: 30 * DAY,
      Grant: 30 * DAY,
      Interaction: 60 * 60,
      Session: 30 * DAY,
      ClientCredentials: 60,
      DeviceCode: 10 * 60,
      BackchannelAuthenticationRequest: 10 * 60,
    },
    renderError(ctx, out) {
      ctx.type = 'json';
      ctx.body = out;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Stats (token endpoint requests with grant_type=refresh_token)
// ---------------------------------------------------------------------------------------------
let stats;
function resetStats() {
  stats = {
    refresh_success: 0,
    refresh_error: 0,
    invalid_grant: 0,
    invalid_client: 0,
    by_error: {},
    by_grant: new Map(),
  };
}
resetStats();
let tokenRequests = 0;
let answerDelay = { ms: 0, remaining: -1 };
let heldAnswers = 0;

// Holds the answer of a token request that is processed normally: res.end is deferred.
function maybeHoldAnswer(res) {
  if (answerDelay.ms <= 0 || answerDelay.remaining === 0) return;
  if (answerDelay.remaining > 0) answerDelay.remaining -= 1;
  const { ms } = answerDelay;
  const end = res.end.bind(res);
  res.end = (...a) => {
    heldAnswers += 1;
    setTimeout(() => {
      heldAnswers -= 1;
      end(...a);
    }, ms);
    return res;
  };
}

function isRefresh(ctx) {
  return ctx?.oidc?.params?.grant_type === 'refresh_token';
}

function grantIdOf(ctx) {
  const entities = ctx?.oidc?.entities || {};
  return entities.Grant?.jti
    ?? entities.RotatedRefreshToken?.grantId
    ?? entities.RefreshToken?.grantId
    ?? refreshTokenGrantIndex.get(ctx?.oidc?.params?.refresh_token)
    ?? null;
}

function bumpGrant(grantId, key) {
  if (!grantId) return;
  let g = stats.by_grant.get(grantId);
  if (!g) {
    g = { success: 0, error: 0 };
    stats.by_grant.set(grantId, g);
  }
  g[key] += 1;
}

function countError(ctx, err) {
  if (!isRefresh(ctx)) return;
  stats.refresh_error += 1;
  const code = err?.error || 'server_error';
  stats.by_error[code] = (stats.by_error[code] || 0) + 1;
  if (code === 'invalid_grant') stats.invalid_grant += 1;
  if (code === 'invalid_client') stats.invalid_client += 1;
  bumpGrant(grantIdOf(ctx), 'error');
}

function statsJson() {
  return {
    refresh_success: stats.refresh_success,
    refresh_error: stats.refresh_error,
    invalid_grant: stats.invalid_grant,
    invalid_client: stats.invalid_client,
    by_error: stats.by_error,
    token_requests: tokenRequests,
    held_answers: heldAnswers,
    by_grant: Object.fromEntries(stats.by_grant),
  };
}

// ---------------------------------------------------------------------------------------------
// Test control endpoints
// ---------------------------------------------------------------------------------------------
class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function sendJson(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
  });
  res.end(body);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > MAX_CONTROL_BODY) {
        reject(new HttpError(413, 'body too large'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

async function readJson(req) {
  const raw = await readBody(req);
  if (raw.trim() === '') return {};
  try {
    const v = JSON.parse(raw);
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
    return v;
  } catch {
    throw new HttpError(400, 'body must be a JSON object');
  }
}

async function mintGrants(provider, { count = 1, account = DEFAULT_ACCOUNT, scope = DEFAULT_SCOPE }) {
  if (!Number.isInteger(count) || count < 1 || count > MAX_MINT) {
    throw new HttpError(400, `count must be an integer in [1, ${MAX_MINT}]`);
  }
  if (typeof account !== 'string' || account === '') throw new HttpError(400, 'account must be a non-empty string');
  if (typeof scope !== 'string' || scope.trim() === '') throw new HttpError(400, 'scope must be a non-empty string');
  const scopeValue = [...new Set(scope.trim().split(/\s+/))].join(' ');
  const client = await provider.Client.find(CLIENT_ID);
  const items = [];
  const authTime = Math.floor(Date.now() / 1000);
  for (let i = 0; i < count; i += 1) {
    const grant = new provider.Grant({ accountId: account, clientId: CLIENT_ID });
    grant.addOIDCScope(scopeValue);
    // eslint-disable-next-line no-await-in-loop
    const grantId = await grant.save();
    const common = {
      accountId: account,
      client,
      grantId,
      gty: 'authorization_code',
      scope: scopeValue,
    };
    const rt = new provider.RefreshToken({ ...common, authTime, expiresWithSession: false });
    // eslint-disable-next-line no-await-in-loop
    const refreshToken = await rt.save();
    const at = new provider.AccessToken({ ...common, expiresWithSession: false });
    // eslint-disable-next-line no-await-in-loop
    const accessToken = await at.save();
    items.push({ grant_id: grantId, refresh_token: refreshToken, access_token: accessToken });
  }
  return { items };
}

async function handleTest(provider, req, res, url) {
  const route = `${req.method} ${url.pathname}`;
  switch (route) {
    case 'POST /test/grants':
      return sendJson(res, 200, await mintGrants(provider, await readJson(req)));
    case 'GET /test/stats':
      return sendJson(res, 200, statsJson());
    case 'POST /test/reset-stats':
      await readBody(req);
      resetStats();
      tokenRequests = 0;
      return sendJson(res, 200, {});
    case 'POST /test/revoke': {
      const { grant_id: grantId } = await readJson(req);
      if (typeof grantId !== 'string' || grantId === '') throw new HttpError(400, 'grant_id must be a non-empty string');
      revokeGrantEverywhere(grantId);
      return sendJson(res, 200, {});
    }
    case 'POST /test/answer-delay': {
      const { ms, count } = await readJson(req);
      if (!Number.isInteger(ms) || ms < 0 || ms > 600000) throw new HttpError(400, 'ms must be an integer in [0, 600000]');
      if (count !== undefined && (!Number.isInteger(count) || count < 1)) throw new HttpError(400, 'count must be a positive integer');
      answerDelay = { ms, remaining: count ?? -1 };
      return sendJson(res, 200, {});
    }
    case 'GET /test/refresh-token': {
      const value = url.searchParams.get('value');
      if (!value) throw new HttpError(400, 'value query parameter is required');
      // Straight from the adapter's map: no find(), no lazy expiry, nothing modified.
      const e = storeFor('RefreshToken').items.get(value);
      return sendJson(res, 200, {
        exists: !!e,
        consumed: !!e?.payload.consumed,
        grant_id: e?.payload.grantId ?? null,
      });
    }
    default:
      throw new HttpError(404, `no such test endpoint: ${route}`);
  }
}

// --auto-consent: finish the login and consent prompts at once (a 303 back to the resume URL).
async function autoConsent(req, res) {
  const details = await provider.interactionDetails(req, res);
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: DEFAULT_ACCOUNT, clientId: details.params.client_id });
  if (details.params.scope) grant.addOIDCScope(String(details.params.scope));
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, {
    login: { accountId: DEFAULT_ACCOUNT },
    consent: { grantId },
  }, { mergeWithLastSubmission: false });
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------
let provider;
let providerCallback;

const server = http.createServer((req, res) => {
  let url;
  try {
    url = new URL(req.url, 'http://127.0.0.1');
  } catch {
    sendJson(res, 400, { error: 'invalid_request', error_description: 'bad request target' });
    return;
  }
  if (url.pathname === '/test' || url.pathname.startsWith('/test/')) {
    handleTest(provider, req, res, url).catch((err) => {
      const status = err instanceof HttpError ? err.status : 500;
      if (status === 500) process.stderr.write(`oidc-server: ${err?.stack || err}\n`);
      if (!res.headersSent) sendJson(res, status, { error: err.message || String(err) });
      else res.destroy();
    });
    return;
  }
  const interaction = /^\/interaction\/([^/]+)$/.exec(url.pathname);
  if (args.autoConsent && interaction && req.method === 'GET') {
    autoConsent(req, res).catch((err) => {
      process.stderr.write(`oidc-server: auto-consent: ${err?.stack || err}\n`);
      if (!res.headersSent) sendJson(res, 500, { error: 'auto-consent failed' });
    });
    return;
  }
  if (url.pathname === '/token') {
    tokenRequests += 1;
    maybeHoldAnswer(res);
  }
  providerCallback(req, res);
});
server.keepAliveTimeout = 60_000;
server.headersTimeout = 65_000;

server.on('error', (err) => {
  process.stderr.write(`oidc-server: ${err.message}\n`);
  process.exit(1);
});

server.listen(args.port, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  provider = new Provider(issuer, buildConfiguration());
  provider.on('grant.success', (ctx) => {
    if (!isRefresh(ctx)) return;
    stats.refresh_success += 1;
    bumpGrant(grantIdOf(ctx), 'success');
  });
  provider.on('grant.error', (ctx, err) => countError(ctx, err));
  provider.on('server_error', (ctx, err) => {
    if (ctx?.oidc?.route === 'token') countError(ctx, err);
    process.stderr.write(`oidc-server: server_error ${ctx?.method} ${ctx?.path}: ${err?.stack || err}\n`);
  });
  providerCallback = provider.callback();
  process.stdout.write(`${JSON.stringify({ msg: 'listening', address: `127.0.0.1:${port}`, issuer })}\n`);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  // closeAllConnections() destroys every socket, so close() completes promptly; exit anyway if not.
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
