// Settings: password, two-factor authentication, API keys, sessions and devices, theme.
import * as api from '../api.js';
import { h, clear, field, toast, dialog, fmtDate, announce } from '../dom.js';
import { errorText } from '../messages.js';
import { session, applyTheme, loadMe } from '../main.js';
import { encode } from '../../vendor/uqr.mjs';
import { ownUsage } from './usage.js';

const TABS = [
  ['account', 'Account'],
  ['security', 'Two-factor'],
  ['keys', 'API keys'],
  ['sessions', 'Sessions'],
  ['usage', 'Usage'],
  ['appearance', 'Appearance'],
];

export function tabs(base, tabsList, active, label) {
  return h(
    'nav',
    { class: 'tabs', 'aria-label': label },
    tabsList.map(([key, title]) =>
      h('a', { href: `${base}/${key}`, class: 'tab', 'aria-current': key === active ? 'page' : null }, title),
    ),
  );
}

export function settingsView(tab) {
  const shown = TABS.filter(([k]) => k !== 'keys' || session.can('apikeys:manage'));
  const active = shown.some(([k]) => k === tab) ? tab : 'account';
  const panel = h('section', { class: 'panel', 'aria-labelledby': 'panel-title' });
  const view = h(
    'main',
    { id: 'main', class: 'page' },
    h('h1', {}, 'Settings'),
    tabs('#/settings', shown, active, 'Settings sections'),
    panel,
  );
  ({ account, security, keys, sessions, usage, appearance })[active](panel);
  return view;
}

function section(panel, title, ...content) {
  clear(panel);
  panel.append(h('h2', { id: 'panel-title' }, title), ...content);
}

function errorBox() {
  return h('p', { class: 'error', role: 'alert', hidden: true });
}

function fail(box, e) {
  box.textContent = errorText(e);
  box.hidden = false;
}

function account(panel) {
  const me = session.me || {};
  const current = h('input', { type: 'password', autocomplete: 'current-password', required: true });
  const next = h('input', { type: 'password', autocomplete: 'new-password', required: true });
  const code = me.totp_enabled ? h('input', { inputmode: 'numeric', autocomplete: 'one-time-code' }) : null;
  const err = errorBox();
  const form = h(
    'form',
    { class: 'stack narrow', novalidate: true },
    h('h3', {}, 'Change password'),
    field('Current password', current),
    field('New password', next, 'At least 15 characters (8 with two-factor on); not your username or e-mail.'),
    code ? field('Authenticator code', code) : null,
    err,
    h('button', { class: 'primary', type: 'submit' }, 'Change password'),
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    err.hidden = true;
    try {
      const body = { current_password: current.value, new_password: next.value };
      if (code && code.value) body.totp_code = code.value.trim();
      api.adopt(await api.api('POST', '/api/auth/password', body));
      current.value = next.value = '';
      toast('Password changed. Your other sessions were signed out.', 'info');
    } catch (ex) {
      fail(err, ex);
    }
  });
  section(
    panel,
    'Account',
    h(
      'dl',
      { class: 'facts' },
      h('dt', {}, 'Username'), h('dd', {}, me.username || ''),
      h('dt', {}, 'E-mail'), h('dd', {}, me.email || '—'),
      h('dt', {}, 'Role'), h('dd', {}, me.role || ''),
      h('dt', {}, 'Sign-in'), h('dd', {}, me.auth_source || 'local'),
      h('dt', {}, 'Last sign-in'), h('dd', {}, fmtDate(me.last_login_at) || '—'),
    ),
    me.auth_source && me.auth_source !== 'local'
      ? h('p', { class: 'muted' }, 'Your password is managed by your organisation’s directory.')
      : form,
  );
}

/** Draws an otpauth URI as a QR code on a canvas (nothing leaves the page). */
function qrCanvas(uri) {
  const qr = encode(uri, { ecc: 'M', border: 2 });
  const size = qr.size;
  const scale = Math.max(4, Math.floor(200 / size));
  const canvas = h('canvas', {
    width: size * scale,
    height: size * scale,
    role: 'img',
    'aria-label': 'QR code for your authenticator app',
    class: 'qr',
  });
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = '#000';
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      if (qr.data[y][x]) ctx.fillRect(x * scale, y * scale, scale, scale);
    }
  }
  return canvas;
}

/** The enrolment flow (also used when a role requires 2FA before anything else). */
export function totpEnrolment(done) {
  const box = h('div', { class: 'stack narrow' });
  const password = h('input', { type: 'password', autocomplete: 'current-password', required: true });
  const err = errorBox();
  const start = h(
    'form',
    { class: 'stack', novalidate: true },
    field('Your password', password, 'Confirms it is you before a new second factor is set up.'),
    err,
    h('button', { class: 'primary', type: 'submit' }, 'Start setup'),
  );
  start.addEventListener('submit', async (e) => {
    e.preventDefault();
    err.hidden = true;
    try {
      const r = await api.api('POST', '/api/auth/2fa/setup', { current_password: password.value });
      const code = h('input', { inputmode: 'numeric', autocomplete: 'one-time-code', required: true, maxlength: 6 });
      const err2 = errorBox();
      const confirm = h(
        'form',
        { class: 'stack', novalidate: true },
        h('p', {}, 'Scan this code with your authenticator app, then enter the 6-digit code it shows.'),
        qrCanvas(r.otpauth_uri),
        h('details', {}, h('summary', {}, 'Can’t scan? Enter the key by hand'), h('code', { class: 'secret' }, r.secret)),
        field('Code from the app', code),
        err2,
        h('button', { class: 'primary', type: 'submit' }, 'Turn on two-factor'),
      );
      confirm.addEventListener('submit', async (ev) => {
        ev.preventDefault();
        err2.hidden = true;
        try {
          const res = await api.api('POST', '/api/auth/2fa/enable', { code: code.value.trim() });
          clear(box);
          box.append(
            h('p', { class: 'success', role: 'status' }, 'Two-factor authentication is on.'),
            h('p', {}, 'Save these recovery codes somewhere safe. Each works once if you lose your phone. They will not be shown again.'),
            h('ul', { class: 'codes', 'aria-label': 'Recovery codes' }, (res.recovery_codes || []).map((c) => h('li', {}, h('code', {}, c)))),
            h('button', { class: 'primary', type: 'button', onclick: () => done && done() }, 'I have saved them'),
          );
          announce('Two-factor authentication turned on');
        } catch (ex) {
          fail(err2, ex);
        }
      });
      clear(box);
      box.append(confirm);
      code.focus();
    } catch (ex) {
      fail(err, ex);
    }
  });
  box.append(start);
  return box;
}

function security(panel) {
  const me = session.me || {};
  if (me.totp_enabled) {
    const password = h('input', { type: 'password', autocomplete: 'current-password', required: true });
    const code = h('input', { inputmode: 'numeric', autocomplete: 'one-time-code', required: true });
    const err = errorBox();
    const form = h(
      'form',
      { class: 'stack narrow', novalidate: true },
      field('Password', password),
      field('Authenticator code', code),
      err,
      h('button', { class: 'danger', type: 'submit' }, 'Turn off two-factor'),
    );
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      try {
        await api.api('POST', '/api/auth/2fa/disable', { current_password: password.value, code: code.value.trim() });
        await loadMe();
        toast('Two-factor authentication is off.', 'info');
        security(panel);
      } catch (ex) {
        fail(err, ex);
      }
    });
    section(panel, 'Two-factor authentication', h('p', { class: 'success' }, 'On: sign-in asks for a code from your authenticator app.'), form);
  } else {
    section(
      panel,
      'Two-factor authentication',
      h('p', {}, 'Off. Add a second factor so a stolen password is not enough to sign in.'),
      totpEnrolment(async () => {
        await loadMe();
        security(panel);
      }),
    );
  }
}

async function keys(panel) {
  const list = h('div', {});
  const name = h('input', { name: 'name', required: true, maxlength: 100 });
  const days = h('input', { name: 'days', type: 'number', min: 1, max: 365, value: 90 });
  const err = errorBox();
  const form = h(
    'form',
    { class: 'inline-form', novalidate: true },
    field('Key name', name),
    field('Expires after (days)', days),
    h('button', { class: 'primary', type: 'submit' }, 'Create key'),
  );
  const shown = h('div', {});
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    err.hidden = true;
    try {
      const body = { name: name.value.trim() };
      if (days.value) body.expires_in_days = Number(days.value);
      const r = await api.api('POST', '/api/auth/api-keys', body);
      name.value = '';
      clear(shown);
      const keyCode = h('code', { class: 'secret', 'data-testid': 'new-api-key' }, r.api_key);
      shown.append(
        h(
          'div',
          { class: 'callout', role: 'status' },
          h('p', {}, 'Copy your new key now. It will not be shown again.'),
          keyCode,
          h('button', { class: 'ghost small', type: 'button', onclick: () => navigator.clipboard.writeText(r.api_key).catch(() => {}) }, 'Copy'),
        ),
      );
      draw();
    } catch (ex) {
      fail(err, ex);
    }
  });
  async function draw() {
    clear(list);
    try {
      const r = await api.api('GET', '/api/auth/api-keys');
      const ks = Array.isArray(r) ? r : r.keys || [];
      if (!ks.length) {
        list.append(h('p', { class: 'muted' }, 'No API keys.'));
        return;
      }
      list.append(
        table(
          ['Name', 'Prefix', 'Created', 'Last used', 'Expires', ''],
          ks.map((k) => [
            k.name,
            h('code', {}, k.prefix || ''),
            fmtDate(k.created_at),
            fmtDate(k.last_used_at) || '—',
            fmtDate(k.expires_at) || 'never',
            k.revoked
              ? h('span', { class: 'muted' }, 'revoked')
              : h('button', {
                  class: 'danger small',
                  type: 'button',
                  onclick: async () => {
                    const ok = await dialog('Revoke key?', h('p', {}, `Programs using “${k.name}” stop working at once.`), [
                      { label: 'Cancel' },
                      { label: 'Revoke', submit: true, class: 'danger', value: 'revoke' },
                    ]);
                    if (!ok) return;
                    try {
                      await api.api('DELETE', '/api/auth/api-keys/' + k.id);
                      draw();
                    } catch (ex) {
                      toast(errorText(ex), 'error');
                    }
                  },
                }, 'Revoke'),
          ]),
          'API keys',
        ),
      );
    } catch (ex) {
      list.append(h('p', { class: 'error' }, errorText(ex)));
    }
  }
  section(
    panel,
    'API keys',
    h('p', { class: 'muted' }, 'Keys let programs use the API and the OpenAI-compatible /v1 endpoint as you, with your permissions or fewer.'),
    form,
    err,
    shown,
    list,
  );
  draw();
}

async function sessions(panel) {
  const list = h('div', {});
  section(panel, 'Sessions and devices', h('p', { class: 'muted' }, 'Everywhere you are signed in. Ending a session signs that device out at once.'), list,
    h('button', {
      class: 'danger',
      type: 'button',
      onclick: async () => {
        const ok = await dialog('Sign out everywhere?', h('p', {}, 'Every session, including this one, ends.'), [
          { label: 'Cancel' },
          { label: 'Sign out everywhere', submit: true, class: 'danger', value: 'all' },
        ]);
        if (!ok) return;
        await api.api('POST', '/api/auth/logout-all').catch(() => {});
        await api.logout();
        location.hash = '#/login';
      },
    }, 'Sign out everywhere'));
  async function draw() {
    clear(list);
    try {
      const r = await api.api('GET', '/api/auth/sessions');
      const ss = Array.isArray(r) ? r : r.sessions || [];
      list.append(
        table(
          ['Device', 'IP', 'Signed in', 'Last active', ''],
          ss.map((s) => [
            (s.user_agent || 'unknown').slice(0, 80) + (s.current ? ' (this device)' : ''),
            s.ip || '',
            fmtDate(s.created_at),
            fmtDate(s.last_used_at),
            s.current
              ? ''
              : h('button', {
                  class: 'ghost small',
                  type: 'button',
                  onclick: async () => {
                    try {
                      await api.api('DELETE', '/api/auth/sessions/' + s.id);
                      draw();
                    } catch (ex) {
                      toast(errorText(ex), 'error');
                    }
                  },
                }, 'End'),
          ]),
          'Sessions',
        ),
      );
    } catch (ex) {
      list.append(h('p', { class: 'error' }, errorText(ex)));
    }
  }
  draw();
}

function usage(panel) {
  section(panel, 'Usage');
  ownUsage(panel);
}

function appearance(panel) {
  const current = localStorage.getItem('palisade.theme') || 'system';
  const group = h(
    'fieldset',
    { class: 'stack' },
    h('legend', {}, 'Theme'),
    ['system', 'light', 'dark'].map((t) =>
      h(
        'label',
        { class: 'radio' },
        h('input', {
          type: 'radio',
          name: 'theme',
          value: t,
          checked: t === current,
          onchange: () => {
            localStorage.setItem('palisade.theme', t);
            applyTheme(t);
          },
        }),
        t === 'system' ? 'Same as the system' : t[0].toUpperCase() + t.slice(1),
      ),
    ),
  );
  section(panel, 'Appearance', group);
}

/** A simple accessible table. */
export function table(headers, rows, caption) {
  // Focusable, so a table wider than a phone can be scrolled from the keyboard.
  return h(
    'div',
    { class: 'table-wrap', tabindex: 0, role: 'region', 'aria-label': caption || 'Table' },
    h(
      'table',
      {},
      caption ? h('caption', { class: 'sr-only' }, caption) : null,
      h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col' }, x)))),
      h('tbody', {}, rows.map((r) => h('tr', {}, r.map((c) => h('td', {}, c))))),
    ),
  );
}
