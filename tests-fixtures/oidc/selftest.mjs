// End-to-end self test of server.mjs (no Rust involved): `node selftest.mjs`.
// Starts the provider on a free port, walks the flows documented in README.md
// with plain HTTP requests (manual redirects + a tiny cookie jar) and exits
// non-zero on the first failure.

import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import { fileURLToPath } from 'node:url';
import * as path from 'node:path';
import * as readline from 'node:readline';

const here = path.dirname(fileURLToPath(import.meta.url));
const CLIENT_ID = 'palisade-selftest';
const CLIENT_SECRET = 'selftest-secret';
const REDIRECT_URI = 'https://127.0.0.1:1234/api/auth/oidc/callback';
const REDIRECT_URI_2 = 'http://127.0.0.1:5678/cb';

let failures = 0;
let passes = 0;
function check(name, cond, detail) {
  if (cond) { passes += 1; console.log(`ok   ${name}`); } else {
    failures += 1;
    console.log(`FAIL ${name}${detail === undefined ? '' : `: ${JSON.stringify(detail)}`}`);
  }
}

const child = spawn(process.execPath, [path.join(here, 'server.mjs')], {
  env: {
    ...process.env,
    OIDC_PORT: '0',
    OIDC_CLIENT_ID: CLIENT_ID,
    OIDC_CLIENT_SECRET: CLIENT_SECRET,
    OIDC_REDIRECT_URI: `${REDIRECT_URI},${REDIRECT_URI_2}`,
  },
  stdio: ['ignore', 'pipe', 'inherit'],
});
const lines = readline.createInterface({ input: child.stdout });
const stdoutLines = [];
const issuer = await new Promise((resolve, reject) => {
  const t = setTimeout(() => reject(new Error('no OIDC_READY within 20s')), 20000);
  lines.on('line', (l) => {
    stdoutLines.push(l);
    const m = l.match(/^OIDC_READY (http:\/\/127\.0\.0\.1:\d+)$/);
    if (m) { clearTimeout(t); resolve(m[1]); }
  });
  child.on('exit', (c) => reject(new Error(`server exited with ${c}`)));
});

const b64u = (buf) => Buffer.from(buf).toString('base64url');
const decode = (jwt) => jwt.split('.').slice(0, 2).map((p) => JSON.parse(Buffer.from(p, 'base64url')));

class Jar {
  cookies = new Map();
  store(res) {
    for (const c of res.headers.getSetCookie()) {
      const [pair] = c.split(';');
      const i = pair.indexOf('=');
      this.cookies.set(pair.slice(0, i), pair.slice(i + 1));
    }
  }
  header() { return [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; '); }
}

async function req(jar, url, opts = {}) {
  const res = await fetch(url, {
    redirect: 'manual',
    ...opts,
    headers: { ...(opts.headers ?? {}), cookie: jar.header() },
  });
  jar.store(res);
  return res;
}

// Runs /auth -> login form -> POST login -> resume; returns the final callback URL.
async function authorize(jar, { login = 'alice', extra = {}, redirectUri = REDIRECT_URI, expectForm = true } = {}) {
  const verifier = b64u(crypto.randomBytes(32));
  const challenge = b64u(crypto.createHash('sha256').update(verifier).digest());
  const state = b64u(crypto.randomBytes(8));
  const nonce = b64u(crypto.randomBytes(8));
  const q = new URLSearchParams({
    client_id: CLIENT_ID,
    response_type: 'code',
    scope: 'openid profile email',
    redirect_uri: redirectUri,
    state,
    nonce,
    code_challenge: challenge,
    code_challenge_method: 'S256',
    ...extra,
  });
  let res = await req(jar, `${issuer}/auth?${q}`);
  let loc = new URL(res.headers.get('location'), issuer);
  if (expectForm) {
    check('GET /auth -> 303 /interaction/<uid>', res.status === 303 && loc.pathname.startsWith('/interaction/'), [res.status, loc.href]);
    res = await req(jar, loc);
    const html = await res.text();
    check('GET /interaction/<uid> -> login form', res.status === 200 && html.includes(`action="${loc.pathname}/login"`), res.status);
    res = await req(jar, `${loc.href}/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ login }),
    });
    loc = new URL(res.headers.get('location'), issuer);
    check('POST login -> 303 /auth/<uid>', res.status === 303 && loc.pathname.startsWith('/auth/'), [res.status, loc.href]);
  }
  // follow same-origin redirects until we leave the IdP
  for (let i = 0; i < 5 && loc.origin === issuer; i += 1) {
    res = await req(jar, loc);
    if (res.status === 200 && loc.pathname.startsWith('/auth/')) {
      // Account switch inside an existing session (e.g. prompt=login as another
      // user): oidc-provider first asks to end the old session with an
      // auto-submitting form; submit it like a browser would.
      const html = await res.text();
      const xsrf = html.match(/name="xsrf" value="([^"]+)"/)?.[1];
      const action = html.match(/<form method="post" action="([^"]+)"/)?.[1];
      if (!xsrf || !action) throw new Error(`unexpected page at ${loc.href}: ${html.slice(0, 300)}`);
      res = await req(jar, action, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ xsrf, logout: 'yes' }),
      });
    }
    if (!res.headers.get('location')) {
      throw new Error(`expected a redirect from ${loc.href}, got ${res.status}: ${(await res.text()).slice(0, 500)}`);
    }
    loc = new URL(res.headers.get('location'), issuer);
  }
  return { final: loc, verifier, state, nonce };
}

async function token(body, { basic = true } = {}) {
  const headers = { 'content-type': 'application/x-www-form-urlencoded' };
  const params = new URLSearchParams(body);
  if (basic) {
    headers.authorization = `Basic ${Buffer.from(`${encodeURIComponent(CLIENT_ID)}:${encodeURIComponent(CLIENT_SECRET)}`).toString('base64')}`;
  } else {
    params.set('client_id', CLIENT_ID);
    params.set('client_secret', CLIENT_SECRET);
  }
  const res = await fetch(`${issuer}/token`, { method: 'POST', headers, body: params });
  return { status: res.status, json: await res.json() };
}

try {
  // discovery + jwks
  const disc = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
  check('discovery issuer', disc.issuer === issuer, disc.issuer);
  check('discovery S256', disc.code_challenge_methods_supported?.includes('S256'));
  const jwks = await (await fetch(disc.jwks_uri)).json();
  check('jwks has RS256 key', jwks.keys?.some((k) => k.kty === 'RSA' && k.alg === 'RS256' && k.kid));

  // 1. alice, code + PKCE, client_secret_basic
  {
    const jar = new Jar();
    const { final, verifier, state, nonce } = await authorize(jar);
    check('callback at redirect_uri', final.href.startsWith(`${REDIRECT_URI}?`), final.href);
    check('callback state', final.searchParams.get('state') === state);
    check('callback iss', final.searchParams.get('iss') === issuer);
    const code = final.searchParams.get('code');
    const t = await token({ grant_type: 'authorization_code', code, redirect_uri: REDIRECT_URI, code_verifier: verifier });
    check('token (basic) 200', t.status === 200, t.json);
    const [hdr, claims] = decode(t.json.id_token);
    console.log('     id_token header', JSON.stringify(hdr));
    console.log('     id_token claims', JSON.stringify(claims));
    check('id_token RS256 + kid in jwks', hdr.alg === 'RS256' && jwks.keys.some((k) => k.kid === hdr.kid));
    check('id_token claims', claims.sub === 'alice' && claims.email === 'alice@example.test'
      && claims.preferred_username === 'alice' && JSON.stringify(claims.groups) === '["palisade-admins"]'
      && claims.aud === CLIENT_ID && claims.iss === issuer && claims.nonce === nonce, claims);
    // verify signature
    const key = crypto.createPublicKey({ key: jwks.keys.find((k) => k.kid === hdr.kid), format: 'jwk' });
    const [h, p, s] = t.json.id_token.split('.');
    check('id_token signature verifies', crypto.verify('sha256', Buffer.from(`${h}.${p}`), key, Buffer.from(s, 'base64url')));
    const ui = await (await fetch(disc.userinfo_endpoint, { headers: { authorization: `Bearer ${t.json.access_token}` } })).json();
    check('userinfo with opaque access token', ui.sub === 'alice' && ui.groups?.[0] === 'palisade-admins', ui);
    const replay = await token({ grant_type: 'authorization_code', code, redirect_uri: REDIRECT_URI, code_verifier: verifier });
    check('code replay rejected', replay.status === 400 && replay.json.error === 'invalid_grant', replay);

    // same cookie jar again: SSO session, no form, straight to the callback
    const again = await authorize(jar, { expectForm: false });
    check('second /auth with session -> callback without login', again.final.href.startsWith(`${REDIRECT_URI}?code=`), again.final.href);
    // prompt=login forces the form again
    const forced = await authorize(jar, { login: 'bob', extra: { prompt: 'login' } });
    const tf = await token({ grant_type: 'authorization_code', code: forced.final.searchParams.get('code'), redirect_uri: REDIRECT_URI, code_verifier: forced.verifier });
    check('prompt=login switches account to bob', tf.json.id_token && decode(tf.json.id_token)[1].sub === 'bob', [forced.final.href, tf.json]);
  }

  // 2. bob, client_secret_post, second redirect uri, groups scope only
  {
    const jar = new Jar();
    const { final, verifier } = await authorize(jar, { login: 'bob', redirectUri: REDIRECT_URI_2 });
    check('callback at 2nd redirect_uri', final.href.startsWith(`${REDIRECT_URI_2}?code=`), final.href);
    const t = await token({ grant_type: 'authorization_code', code: final.searchParams.get('code'), redirect_uri: REDIRECT_URI_2, code_verifier: verifier }, { basic: false });
    check('token (post) 200', t.status === 200, t.json);
    const [, claims] = decode(t.json.id_token);
    check('bob claims', claims.sub === 'bob' && claims.email === 'bob@example.test' && claims.groups?.[0] === 'staff', claims);
  }

  // 3. wrong PKCE verifier / missing PKCE
  {
    const jar = new Jar();
    const { final } = await authorize(jar);
    const t = await token({ grant_type: 'authorization_code', code: final.searchParams.get('code'), redirect_uri: REDIRECT_URI, code_verifier: b64u(crypto.randomBytes(32)) });
    check('wrong code_verifier -> invalid_grant', t.status === 400 && t.json.error === 'invalid_grant', t.json);
    const q = new URLSearchParams({ client_id: CLIENT_ID, response_type: 'code', scope: 'openid', redirect_uri: REDIRECT_URI, state: 'x' });
    const res = await fetch(`${issuer}/auth?${q}`, { redirect: 'manual' });
    const loc = new URL(res.headers.get('location') ?? 'about:blank');
    check('missing code_challenge -> error redirect', loc.searchParams.get('error') === 'invalid_request', loc.href);
  }

  // 4. unknown account -> access_denied at the callback
  {
    const jar = new Jar();
    const { final } = await authorize(jar, { login: 'mallory' });
    check('unknown login -> error=access_denied', final.href.startsWith(REDIRECT_URI) && final.searchParams.get('error') === 'access_denied', final.href);
  }

  // 5. user JWT access token for audience palisade (resource indicator)
  {
    const jar = new Jar();
    const { final, verifier } = await authorize(jar, { extra: { resource: 'urn:palisade', scope: 'openid profile email api' } });
    const t = await token({ grant_type: 'authorization_code', code: final.searchParams.get('code'), redirect_uri: REDIRECT_URI, code_verifier: verifier });
    const [hdr, at] = decode(t.json.access_token);
    console.log('     user access_token', JSON.stringify(hdr), JSON.stringify(at));
    check('user JWT access token', hdr.typ === 'at+jwt' && hdr.alg === 'RS256' && at.aud === 'palisade' && at.sub === 'alice'
      && at.iss === issuer && at.groups?.[0] === 'palisade-admins' && at.scope === 'api', at);
    check('id_token still issued with resource', decode(t.json.id_token)[1].sub === 'alice');
  }

  // 6. client_credentials JWT for audience palisade (basic and post, default resource)
  for (const basic of [true, false]) {
    const t = await token({ grant_type: 'client_credentials' }, { basic });
    const [hdr, at] = decode(t.json.access_token);
    if (basic) console.log('     client_credentials access_token', JSON.stringify(hdr), JSON.stringify(at));
    check(`client_credentials JWT (${basic ? 'basic' : 'post'})`, t.status === 200 && hdr.alg === 'RS256' && at.aud === 'palisade'
      && at.iss === issuer && at.client_id === CLIENT_ID && at.sub === CLIENT_ID, t.json);
  }
  {
    const t = await token({ grant_type: 'client_credentials', resource: 'urn:palisade', scope: 'api' });
    check('client_credentials with explicit resource+scope', t.status === 200 && decode(t.json.access_token)[1].scope === 'api', t.json);
    const bad = await token({ grant_type: 'client_credentials', resource: 'urn:other' });
    check('client_credentials unknown resource -> invalid_target', bad.json.error === 'invalid_target', bad.json);
  }

  check('stdout had exactly the READY line', stdoutLines.length === 1, stdoutLines);
} catch (err) {
  failures += 1;
  console.log(`FAIL exception: ${err.stack}`);
} finally {
  child.kill('SIGTERM');
}
console.log(`${passes} passed, ${failures} failed`);
process.exitCode = failures ? 1 : 0;
