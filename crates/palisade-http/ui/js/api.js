// The only way the UI talks to the server: the public REST/SSE API.
//
// The access token lives in this module's memory only (never in storage); the refresh token is
// an HttpOnly `__Host-` cookie the page cannot read. Every call that changes state, and every
// cookie call, carries the CSRF header. A silent refresh runs a minute before expiry.

const CSRF = { 'X-Palisade-CSRF': '1' };

let access = null;
let refreshTimer = null;
let onSignedOut = () => {};

export class ApiError extends Error {
  constructor(status, body, headers) {
    const err = (body && body.error) || {};
    super(err.message || `request failed (${status})`);
    this.status = status;
    this.code = err.code || 'http_' + status;
    this.categories = err.categories || [];
    const ra = headers && headers.get('Retry-After');
    this.retryAfter = ra ? parseInt(ra, 10) : null;
  }
}

/** Called when the session ends (refresh failed, logout elsewhere). */
export function setSignedOutHandler(fn) {
  onSignedOut = fn;
}

export function signedIn() {
  return access !== null;
}

function schedule(expiresIn) {
  clearTimeout(refreshTimer);
  const ms = Math.max(5, (expiresIn || 900) - 60) * 1000;
  refreshTimer = setTimeout(() => {
    refresh().catch(() => {});
  }, ms);
}

function accept(tokens) {
  access = tokens.access_token;
  schedule(tokens.expires_in);
}

function forget() {
  access = null;
  clearTimeout(refreshTimer);
  refreshTimer = null;
}

async function parse(res) {
  const text = await res.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

let refreshing = null;

/** Obtains a new access token through the refresh cookie (one request at a time). */
export function refresh() {
  if (!refreshing) {
    refreshing = (async () => {
      const res = await fetch('/api/auth/refresh', {
        method: 'POST',
        headers: { ...CSRF },
        credentials: 'same-origin',
      });
      const body = await parse(res);
      if (!res.ok) {
        const wasSignedIn = access !== null;
        forget();
        if (wasSignedIn) onSignedOut();
        throw new ApiError(res.status, body, res.headers);
      }
      accept(body);
      return body;
    })().finally(() => {
      refreshing = null;
    });
  }
  return refreshing;
}

/** Resumes a session after a page load, if the cookie still holds one. */
export async function resume() {
  try {
    await refresh();
    return true;
  } catch {
    return false;
  }
}

function headersFor(method, body) {
  const h = {};
  if (access) h.Authorization = 'Bearer ' + access;
  if (method !== 'GET') Object.assign(h, CSRF);
  if (body !== undefined) h['Content-Type'] = 'application/json';
  return h;
}

/** A raw fetch with auth; retried once after a refresh when the token has expired. */
export async function raw(method, path, body, signal) {
  const send = () =>
    fetch(path, {
      method,
      headers: headersFor(method, body),
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      signal,
    });
  let res = await send();
  if (res.status === 401 && access) {
    try {
      await refresh();
    } catch {
      return res;
    }
    res = await send();
  }
  return res;
}

/** JSON call: the parsed body, or an ApiError. */
export async function api(method, path, body) {
  const res = await raw(method, path, body);
  const data = await parse(res);
  if (!res.ok) throw new ApiError(res.status, data, res.headers);
  return data;
}

/** Password login; `{mfa_required, mfa_token}` when a TOTP code is needed next. */
export async function login(username, password) {
  const res = await fetch('/api/auth/login', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...CSRF },
    body: JSON.stringify({ username, password }),
    credentials: 'same-origin',
  });
  const body = await parse(res);
  if (!res.ok) throw new ApiError(res.status, body, res.headers);
  if (body.mfa_required) return body;
  accept(body);
  return body;
}

export async function loginSecondFactor(mfaToken, code) {
  const res = await fetch('/api/auth/login/2fa', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...CSRF },
    body: JSON.stringify({ mfa_token: mfaToken, code }),
    credentials: 'same-origin',
  });
  const body = await parse(res);
  if (!res.ok) throw new ApiError(res.status, body, res.headers);
  accept(body);
  return body;
}

/** Takes fresh tokens from an answer that issues them (password change). */
export function adopt(tokens) {
  if (tokens && tokens.access_token) accept(tokens);
}

export async function logout() {
  try {
    await fetch('/api/auth/logout', {
      method: 'POST',
      headers: headersFor('POST'),
      credentials: 'same-origin',
    });
  } finally {
    forget();
  }
}

/**
 * Streams a chat answer: calls `onEvent` with each server-sent event's JSON. Resolves when the
 * stream ends; rejects with ApiError when the request itself is refused.
 */
export async function stream(path, body, onEvent, signal) {
  const res = await raw('POST', path, body, signal);
  if (!res.ok) {
    throw new ApiError(res.status, await parse(res), res.headers);
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const chunk = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = chunk
        .split('\n')
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).trimStart())
        .join('\n');
      if (!data) continue;
      try {
        onEvent(JSON.parse(data));
      } catch {
        // A malformed event is skipped, never executed or shown raw.
      }
    }
  }
}
