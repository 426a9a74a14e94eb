// Throwaway OpenID Connect provider for Palisade integration tests.
//
// Run: OIDC_PORT=0 OIDC_CLIENT_ID=palisade OIDC_CLIENT_SECRET=s3cret \
//      OIDC_REDIRECT_URI=https://127.0.0.1:1234/api/auth/oidc/callback node server.mjs
//
// stdout carries exactly one line, `OIDC_READY http://127.0.0.1:<port>`, once the
// provider is listening; everything else (provider notices, errors) goes to stderr.
// See README.md for the non-interactive login flow.

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import { once } from 'node:events';

// Anything the library prints (console.info/log NOTICEs) must not pollute stdout,
// so redirect before the library is loaded (hence the dynamic import).
console.log = console.error;
console.info = console.error;
const { default: Provider, errors } = await import('oidc-provider');

function env(name, fallback) {
  const v = process.env[name];
  if (v === undefined || v === '') {
    if (fallback === undefined) {
      console.error(`server.mjs: missing required environment variable ${name}`);
      process.exit(2);
    }
    return fallback;
  }
  return v;
}

const PORT = Number.parseInt(env('OIDC_PORT', '0'), 10);
const CLIENT_ID = env('OIDC_CLIENT_ID');
const CLIENT_SECRET = env('OIDC_CLIENT_SECRET');
// One or more redirect URIs, separated by commas or whitespace.
const REDIRECT_URIS = env('OIDC_REDIRECT_URI').split(/[\s,]+/).filter(Boolean);
// Resource indicator (RFC 8707; must be an absolute URI) and the `aud` of the
// JWT access tokens issued for it.
const RESOURCE = env('OIDC_RESOURCE', 'urn:palisade');
const AUDIENCE = env('OIDC_AUDIENCE', 'palisade');
const RESOURCE_SCOPE = 'api';

// ---------------------------------------------------------------- accounts
const ACCOUNTS = {
  alice: {
    name: 'Alice Example',
    preferred_username: 'alice',
    email: 'alice@example.test',
    email_verified: true,
    groups: ['palisade-admins'],
  },
  bob: {
    name: 'Bob Example',
    preferred_username: 'bob',
    email: 'bob@example.test',
    email_verified: true,
    groups: ['staff'],
  },
  carol: {
    name: 'Carol Example',
    preferred_username: 'carol',
    email: 'carol@example.test',
    email_verified: false,
    groups: [],
  },
};

async function findAccount(_ctx, sub) {
  const profile = ACCOUNTS[sub];
  if (!profile) return undefined;
  return {
    accountId: sub,
    async claims() {
      return { sub, ...profile };
    },
  };
}

// ---------------------------------------------------------------- provider
const server = http.createServer();
server.listen(PORT, '127.0.0.1');
await once(server, 'listening');
const { port } = server.address();
const ISSUER = `http://127.0.0.1:${port}`;

const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingJwk = {
  ...privateKey.export({ format: 'jwk' }),
  kid: crypto.randomBytes(8).toString('hex'),
  use: 'sig',
  alg: 'RS256',
};

const provider = new Provider(ISSUER, {
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    redirect_uris: REDIRECT_URIS,
    post_logout_redirect_uris: REDIRECT_URIS.map((u) => new URL('/', u).href),
    response_types: ['code'],
    grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
    // client_secret_post is accepted as well: oidc-provider treats the two
    // client-secret methods as interchangeable at the token endpoint.
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [signingJwk] },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  findAccount,
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username', 'groups'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access', RESOURCE_SCOPE],
  // Put every claim of the granted scopes into the id_token (not only userinfo).
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // client_credentials without `resource` gets the Palisade JWT by default;
      // the authorization code flow only gets it when `resource` is requested
      // (otherwise its access token stays opaque and works at /me (userinfo)).
      defaultResource: (ctx, _client, oneOf) => {
        if (oneOf) return oneOf;
        if (ctx.oidc.params?.grant_type === 'client_credentials') return RESOURCE;
        return undefined;
      },
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resourceIndicator) => {
        if (resourceIndicator !== RESOURCE) {
          throw new errors.InvalidTarget(`unknown resource indicator; use ${RESOURCE}`);
        }
        return {
          scope: RESOURCE_SCOPE,
          audience: AUDIENCE,
          accessTokenTTL: 3600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  // Explicit lifetimes (seconds) also keep the library from logging notices.
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 600,
    ClientCredentials: 3600,
    Grant: 3600,
    IdToken: 3600,
    Interaction: 3600,
    RefreshToken: 86400,
    Session: 86400,
  },
  // Extra claims on access tokens (JWT payload / introspection).
  extraTokenClaims: async (_ctx, token) => {
    const profile = token.accountId ? ACCOUNTS[token.accountId] : undefined;
    if (!profile) return undefined;
    return {
      preferred_username: profile.preferred_username,
      email: profile.email,
      groups: profile.groups,
    };
  },
  renderError: async (ctx, out, error) => {
    ctx.type = 'html';
    ctx.body = `<!doctype html><title>oidc error</title><pre>${escapeHtml(JSON.stringify(out, null, 2))}</pre>`;
    console.error('oidc-provider error:', error?.message ?? error);
  },
});

// ---------------------------------------------------------------- interactions
function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  })[c]);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('body too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// Grant everything the authorization request asked for (auto-consent).
async function grantEverything(details, accountId) {
  const { params, prompt } = details;
  let grant;
  if (details.grantId) grant = await provider.Grant.find(details.grantId);
  // a different account logging in (e.g. prompt=login) must not reuse the old grant
  if (!grant || grant.accountId !== accountId || grant.clientId !== params.client_id) {
    grant = new provider.Grant({ accountId, clientId: params.client_id });
  }
  if (params.scope) grant.addOIDCScope(params.scope);
  if (params.claims) {
    try {
      const claims = JSON.parse(params.claims);
      const names = new Set([
        ...Object.keys(claims.id_token ?? {}),
        ...Object.keys(claims.userinfo ?? {}),
      ]);
      if (names.size) grant.addOIDCClaims([...names]);
    } catch { /* invalid claims parameter is rejected by the provider itself */ }
  }
  const resources = params.resource === undefined ? []
    : [].concat(params.resource);
  for (const r of resources) grant.addResourceScope(r, RESOURCE_SCOPE);
  const d = prompt?.details ?? {};
  if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
  if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(d.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  return grant.save();
}

function loginPage(uid, details, error) {
  const hint = details.params.login_hint ?? '';
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>Palisade test IdP - sign in</title></head>
<body>
<h1>Palisade test IdP</h1>
${error ? `<p style="color:red">${escapeHtml(error)}</p>` : ''}
<p>Client: ${escapeHtml(details.params.client_id)}. Test accounts: ${Object.keys(ACCOUNTS).join(', ')} (no password).</p>
<form method="post" action="/interaction/${escapeHtml(uid)}/login">
  <label>login <input name="login" value="${escapeHtml(hint)}" autofocus></label>
  <button type="submit">Sign in</button>
</form>
<form method="post" action="/interaction/${escapeHtml(uid)}/abort">
  <button type="submit">Cancel</button>
</form>
</body></html>`;
}

async function handleInteraction(req, res, url) {
  const m = url.pathname.match(/^\/interaction\/([^/]+)(?:\/(login|abort))?\/?$/);
  if (!m) return false;
  const [, uid, action] = m;
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction uid mismatch');

  if (req.method === 'GET' && !action) {
    if (details.prompt.name === 'login') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(loginPage(uid, details));
      return true;
    }
    // consent (or any other prompt) with an existing session: grant automatically
    const accountId = details.session?.accountId;
    const grantId = await grantEverything(details, accountId);
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return true;
  }

  if (req.method === 'POST' && action === 'login') {
    const form = await readForm(req);
    const login = (form.get('login') ?? '').trim();
    if (!ACCOUNTS[login]) {
      // Unknown account: end the flow; the client gets ?error=access_denied.
      await provider.interactionFinished(req, res, {
        error: 'access_denied',
        error_description: `unknown test account '${login}'`,
      }, { mergeWithLastSubmission: false });
      return true;
    }
    const grantId = await grantEverything(details, login);
    await provider.interactionFinished(req, res, {
      login: { accountId: login },
      consent: { grantId },
    }, { mergeWithLastSubmission: false });
    return true;
  }

  if (req.method === 'POST' && action === 'abort') {
    await provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'end-user aborted interaction',
    }, { mergeWithLastSubmission: false });
    return true;
  }

  res.writeHead(405, { 'content-type': 'text/plain' });
  res.end('method not allowed\n');
  return true;
}

const oidcCallback = provider.callback();
server.on('request', async (req, res) => {
  const url = new URL(req.url, ISSUER);
  if (url.pathname.startsWith('/interaction/')) {
    try {
      if (await handleInteraction(req, res, url)) return;
    } catch (err) {
      console.error('interaction error:', err);
      if (!res.headersSent) {
        res.writeHead(400, { 'content-type': 'text/plain' });
        res.end(`interaction error: ${err.message}\n`);
      }
      return;
    }
  }
  oidcCallback(req, res);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

process.stdout.write(`OIDC_READY ${ISSUER}\n`);
