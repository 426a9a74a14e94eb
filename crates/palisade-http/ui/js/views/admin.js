// Administration, by permission: users, tenants, roles, the model registry, the guard policy,
// the audit log, usage, background jobs (dead letters) and retention. Each section is one entry
// of SECTIONS.
import * as api from '../api.js';
import { h, clear, field, toast, dialog, fmtDate, announce } from '../dom.js';
import { errorText } from '../messages.js';
import { session } from '../main.js';
import { tabs, table } from './settings.js';
import { adminUsage } from './usage.js';

const SECTIONS = [
  { key: 'users', title: 'Users', perm: 'users:manage', draw: users },
  { key: 'tenants', title: 'Tenants', perm: 'tenants:manage', draw: tenants },
  { key: 'roles', title: 'Roles', perm: 'roles:read', draw: roles },
  { key: 'models', title: 'Models', perm: 'models:manage', draw: models },
  { key: 'guard', title: 'Guard policy', perm: 'guard:manage', draw: guardPolicy },
  { key: 'events', title: 'Audit log', perm: 'audit:read', draw: events },
  { key: 'usage', title: 'Usage', perm: 'usage:read', draw: usage },
  { key: 'jobs', title: 'Jobs', perm: 'jobs:manage', draw: jobs },
  { key: 'retention', title: 'Retention', perm: 'retention:manage', draw: retention },
];

/** Usage of the tenant (or all tenants), with user names when the caller may list users. */
function usage(box) {
  let names;
  adminUsage(box, async () => {
    if (names) return names;
    names = {};
    if (session.can('users:manage')) {
      try {
        const r = await api.api('GET', '/api/admin/users?limit=100');
        for (const u of r.users) names[u.id] = u.username;
      } catch {
        // Ids stand in for names.
      }
    }
    return names;
  });
}

export function adminView(tab) {
  const allowed = SECTIONS.filter((s) => session.can(s.perm));
  if (!allowed.length) {
    return h('main', { id: 'main', class: 'page' }, h('h1', {}, 'Administration'), h('p', {}, 'Your role has no administration rights.'));
  }
  const active = allowed.find((s) => s.key === tab) || allowed[0];
  const panel = h('section', { class: 'panel', 'aria-labelledby': 'panel-title' });
  const view = h(
    'main',
    { id: 'main', class: 'page' },
    h('h1', {}, 'Administration'),
    tabs('#/admin', allowed.map((s) => [s.key, s.title]), active.key, 'Administration sections'),
    panel,
  );
  panel.append(h('h2', { id: 'panel-title' }, active.title));
  const body = h('div', {});
  panel.append(body);
  active.draw(body);
  return view;
}

function loading(box) {
  clear(box).append(h('p', { class: 'muted' }, 'Loading…'));
}

function failed(box, e) {
  clear(box).append(h('p', { class: 'error', role: 'alert' }, errorText(e)));
}

async function roleNames() {
  try {
    const r = await api.api('GET', '/api/admin/roles');
    return (Array.isArray(r) ? r : r.roles || []).map((x) => x.name);
  } catch {
    return ['user', 'tenant_admin', 'auditor', 'admin'];
  }
}

function users(box) {
  const search = h('input', { type: 'search', placeholder: 'Search by name or e-mail', 'aria-label': 'Search users' });
  const list = h('div', {});
  const create = h('button', { class: 'primary', type: 'button', onclick: () => createUser() }, 'Create user');
  clear(box).append(h('div', { class: 'toolbar' }, search, create), list);
  let timer;
  search.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(draw, 250);
  });

  async function draw() {
    loading(list);
    try {
      const q = encodeURIComponent(search.value.trim());
      const r = await api.api('GET', `/api/admin/users?limit=100${q ? '&search=' + q : ''}`);
      clear(list).append(
        h('p', { class: 'muted small' }, `${r.total} user${r.total === 1 ? '' : 's'}`),
        table(
          ['User', 'Role', 'Status', 'Last sign-in', ''],
          r.users.map((u) => [
            h('span', {}, u.username, u.email ? h('small', { class: 'muted block' }, u.email) : null),
            u.role,
            u.locked ? 'locked' : u.is_active ? 'active' : 'disabled',
            fmtDate(u.last_login_at) || '—',
            h('button', { class: 'ghost small', type: 'button', onclick: () => manage(u) }, 'Manage'),
          ]),
          'Users',
        ),
      );
    } catch (e) {
      failed(list, e);
    }
  }

  async function createUser() {
    const names = await roleNames();
    const body = h(
      'div',
      { class: 'stack' },
      field('Username', h('input', { name: 'username', required: true, autocomplete: 'off' })),
      field('E-mail (optional)', h('input', { name: 'email', type: 'email', autocomplete: 'off' })),
      field('Role', h('select', { name: 'role' }, names.map((n) => h('option', { value: n, selected: n === 'user' }, n)))),
      h('p', { class: 'muted small' }, 'A temporary password is generated; the user must change it at first sign-in.'),
    );
    const r = await dialog('Create user', body, [
      { label: 'Cancel' },
      { label: 'Create', submit: true, class: 'primary', value: 'create' },
    ]);
    if (!r) return;
    try {
      const req = { username: r.username.trim(), role: r.role };
      if (r.email) req.email = r.email.trim();
      const res = await api.api('POST', '/api/admin/users', req);
      await dialog(
        'User created',
        h(
          'div',
          { class: 'stack' },
          h('p', {}, `Give ${res.user.username} this temporary password through a safe channel. It is shown once.`),
          h('code', { class: 'secret', 'data-testid': 'temporary-password' }, res.temporary_password || ''),
        ),
        [{ label: 'Done', submit: true, class: 'primary', value: 'ok' }],
      );
      draw();
    } catch (e) {
      toast(errorText(e), 'error');
    }
  }

  async function manage(u) {
    const names = await roleNames();
    const body = h(
      'div',
      { class: 'stack' },
      field('Role', h('select', { name: 'role' }, names.map((n) => h('option', { value: n, selected: n === u.role }, n)))),
      h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'active', checked: u.is_active, value: 'yes' }), 'Account enabled'),
      u.locked ? h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'unlock', value: 'yes' }), 'Unlock (after failed sign-ins)') : null,
    );
    const r = await dialog('Manage ' + u.username, body, [
      { label: 'Cancel' },
      { label: 'Reset password', submit: true, class: 'ghost', value: 'reset' },
      { label: 'End sessions', submit: true, class: 'ghost', value: 'sessions' },
      { label: 'Save', submit: true, class: 'primary', value: 'save' },
    ]);
    if (!r) return;
    try {
      if (r._action === 'reset') {
        const res = await api.api('POST', `/api/admin/users/${u.id}/reset-password`, {});
        await dialog('Password reset', h('div', { class: 'stack' }, h('p', {}, 'The new temporary password (shown once):'), h('code', { class: 'secret' }, res.temporary_password || '')), [
          { label: 'Done', submit: true, class: 'primary', value: 'ok' },
        ]);
      } else if (r._action === 'sessions') {
        await api.api('DELETE', `/api/admin/users/${u.id}/sessions`);
        toast(`${u.username} was signed out everywhere.`, 'info');
      } else {
        const patch = {};
        if (r.role !== u.role) patch.role = r.role;
        const active = r.active === 'yes';
        if (active !== u.is_active) patch.is_active = active;
        if (r.unlock === 'yes') patch.unlock = true;
        if (Object.keys(patch).length) {
          await api.api('PATCH', '/api/admin/users/' + u.id, patch);
          announce('User updated');
        }
      }
      draw();
    } catch (e) {
      toast(errorText(e), 'error');
    }
  }

  draw();
}

function tenants(box) {
  const list = h('div', {});
  const name = h('input', { name: 'name', required: true, maxlength: 100 });
  const form = h('form', { class: 'inline-form', novalidate: true }, field('New tenant', name), h('button', { class: 'primary', type: 'submit' }, 'Create tenant'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      await api.api('POST', '/api/admin/tenants', { name: name.value.trim() });
      name.value = '';
      draw();
    } catch (ex) {
      toast(errorText(ex), 'error');
    }
  });
  clear(box).append(form, list);
  async function draw() {
    loading(list);
    try {
      const r = await api.api('GET', '/api/admin/tenants');
      const ts = Array.isArray(r) ? r : r.tenants || [];
      clear(list).append(
        table(
          ['Name', 'Id', 'Status', 'Created', ''],
          ts.map((t) => [
            t.name,
            h('code', { class: 'small' }, t.id),
            t.is_active ? 'active' : 'disabled',
            fmtDate(t.created_at),
            h('button', {
              class: t.is_active ? 'danger small' : 'ghost small',
              type: 'button',
              onclick: async () => {
                try {
                  await api.api('PATCH', '/api/admin/tenants/' + t.id, { is_active: !t.is_active });
                  draw();
                } catch (ex) {
                  toast(errorText(ex), 'error');
                }
              },
            }, t.is_active ? 'Disable' : 'Enable'),
          ]),
          'Tenants',
        ),
      );
    } catch (e) {
      failed(list, e);
    }
  }
  draw();
}

async function roles(box) {
  loading(box);
  try {
    const r = await api.api('GET', '/api/admin/roles');
    const rs = Array.isArray(r) ? r : r.roles || [];
    clear(box).append(
      h('p', { class: 'muted' }, 'Roles come from the configuration file (`[roles]`); built-in roles cannot be changed.'),
      table(
        ['Role', 'Permissions', 'Two-factor', ''],
        rs.map((x) => [
          h('span', {}, x.name, x.description ? h('small', { class: 'muted block' }, x.description) : null),
          h('span', { class: 'chips' }, x.permissions.map((p) => h('code', { class: 'chip' }, p))),
          x.require_2fa ? 'required' : 'optional',
          x.builtin ? 'built-in' : 'configured',
        ]),
        'Roles',
      ),
    );
  } catch (e) {
    failed(box, e);
  }
}

const list = (v) => (v || '').split(',').map((x) => x.trim()).filter(Boolean);

/** The add/edit form of a registry entry; resolves with the PUT body or null. */
async function modelForm(m) {
  const isNew = !m;
  m = m || { provider: 'openai', trust_zone: 'external', context_size: 8192, default_max_tokens: 512, max_tokens: 2048, enabled: true };
  const opt = (values, current) => values.map((v) => h('option', { value: v, selected: v === current }, v));
  const body = h(
    'div',
    { class: 'stack' },
    isNew ? field('Name (what users pick)', h('input', { name: 'name', required: true, pattern: '[A-Za-z0-9._:\\-]+', autocomplete: 'off' })) : null,
    field('Provider', h('select', { name: 'provider' }, opt(['openai', 'ollama', 'local'], m.provider))),
    field('Upstream model id', h('input', { name: 'upstream_model', value: m.upstream_model || '', autocomplete: 'off' }), 'Empty: the name above.'),
    field('Base URL', h('input', { name: 'base_url', value: m.base_url || '', autocomplete: 'off', inputmode: 'url' }), 'OpenAI-style: the API root ending in /v1; Ollama: the server root.'),
    field('API key reference', h('input', { name: 'api_key', value: m.api_key || '', autocomplete: 'off' }), 'env::NAME or file::PATH, never the key itself.'),
    field('Trust zone', h('select', { name: 'trust_zone' }, opt(['internal', 'external'], m.trust_zone)), 'External: prompts leave the organisation (the guard pseudonymises personal data).'),
    field('Context size (tokens)', h('input', { name: 'context_size', type: 'number', min: 256, value: m.context_size })),
    field('Default max_tokens', h('input', { name: 'default_max_tokens', type: 'number', min: 1, value: m.default_max_tokens })),
    field('Largest max_tokens', h('input', { name: 'max_tokens', type: 'number', min: 1, value: m.max_tokens })),
    field('Roles (comma-separated; empty = every role that may chat)', h('input', { name: 'roles', value: (m.roles || []).join(', ') })),
    field('Fallback models (comma-separated, in order)', h('input', { name: 'fallback', value: (m.fallback || []).join(', ') })),
    field('Description', h('input', { name: 'description', value: m.description || '' })),
    h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'enabled', value: 'yes', checked: m.enabled !== false }), 'Enabled (listed and served)'),
  );
  const r = await dialog(isNew ? 'Add model' : 'Edit ' + m.name, body, [
    { label: 'Cancel' },
    { label: 'Save', submit: true, class: 'primary', value: 'save' },
  ]);
  if (!r) return null;
  const spec = {
    provider: r.provider,
    upstream_model: r.upstream_model.trim(),
    trust_zone: r.trust_zone,
    context_size: Number(r.context_size),
    default_max_tokens: Number(r.default_max_tokens),
    max_tokens: Number(r.max_tokens),
    roles: list(r.roles),
    fallback: list(r.fallback),
    description: r.description.trim(),
    enabled: r.enabled === 'yes',
  };
  if (r.base_url.trim()) spec.base_url = r.base_url.trim();
  if (r.api_key.trim()) spec.api_key = r.api_key.trim();
  if (!isNew) {
    spec.max_retries = m.max_retries;
    spec.timeouts = m.timeouts;
  }
  return { name: isNew ? r.name.trim() : m.name, spec };
}

async function models(box) {
  loading(box);
  let ms;
  try {
    const r = await api.api('GET', '/api/admin/models');
    ms = Array.isArray(r) ? r : r.models || [];
  } catch (e) {
    failed(box, e);
    return;
  }
  const save = async (current) => {
    const f = await modelForm(current);
    if (!f) return;
    try {
      await api.api('PUT', '/api/admin/models/' + encodeURIComponent(f.name), f.spec);
      announce('Model saved');
      models(box);
    } catch (ex) {
      toast(errorText(ex), 'error');
    }
  };
  const test = async (m, out) => {
    out.textContent = 'Testing…';
    try {
      const r = await api.api('POST', `/api/admin/models/${encodeURIComponent(m.name)}/test`);
      out.textContent = r.ok
        ? `OK in ${r.latency_ms} ms`
        : r.fallback_used
          ? `Failed; the fallback ${r.model} answered`
          : `Failed: ${r.error ? r.error.message : 'no answer'}`;
      out.className = 'small ' + (r.ok ? 'success' : 'error');
    } catch (ex) {
      out.textContent = errorText(ex);
      out.className = 'small error';
    }
  };
  clear(box).append(
    h('div', { class: 'toolbar' },
      h('p', { class: 'muted' }, 'The model registry. Entries from the configuration file can be overridden here; changes apply at once and are stored.'),
      h('button', { class: 'primary', type: 'button', onclick: () => save(null) }, 'Add model')),
    table(
      ['Model', 'Provider', 'Zone', 'Context', 'Source', 'Status', ''],
      ms.map((m) => {
        const out = h('span', { class: 'small', role: 'status' });
        return [
          h('span', {}, m.name, m.description ? h('small', { class: 'muted block' }, m.description) : null),
          m.provider + (m.upstream_model ? ' · ' + m.upstream_model : ''),
          m.trust_zone,
          String(m.context_size || ''),
          m.source || '',
          !m.enabled ? 'disabled' : m.available === false ? 'circuit open' : 'available',
          h('span', { class: 'row-actions' },
            h('button', { class: 'ghost small', type: 'button', 'aria-label': 'Test ' + m.name, onclick: () => test(m, out) }, 'Test'),
            h('button', { class: 'ghost small', type: 'button', 'aria-label': 'Edit ' + m.name, onclick: () => save(m) }, 'Edit'),
            h('button', {
              class: 'danger small',
              type: 'button',
              'aria-label': 'Remove ' + m.name,
              onclick: async () => {
                const ok = await dialog('Remove model?', h('p', {}, `Users can no longer pick “${m.name}”.`), [
                  { label: 'Cancel' },
                  { label: 'Remove', submit: true, class: 'danger', value: 'rm' },
                ]);
                if (!ok) return;
                try {
                  await api.api('DELETE', '/api/admin/models/' + encodeURIComponent(m.name));
                  models(box);
                } catch (ex) {
                  toast(errorText(ex), 'error');
                }
              },
            }, 'Remove'),
            out),
        ];
      }),
      'Models',
    ),
  );
}

/** A short, readable summary of an event's facts (the whole JSON is in the row's title). */
function summary(e) {
  const d = e.detail || {};
  const parts = [];
  for (const k of ['outcome', 'route', 'model', 'code', 'status', 'action', 'categories', 'completion_tokens', 'latency_ms', 'error', 'kind', 'conversations', 'days', 'hold']) {
    if (d[k] !== undefined && d[k] !== null) parts.push(`${k}: ${Array.isArray(d[k]) ? d[k].join(', ') : d[k]}`);
  }
  return parts.join(' · ');
}

/** Every kind of audit event (the server refuses others; a test keeps this list whole). */
const EVENT_KINDS = [
  'login_success', 'login_failure', 'login_locked', 'token_refresh', 'refresh_reuse', 'logout', 'logout_all',
  'password_change', 'totp_enabled', 'totp_disabled', 'totp_failure', 'recovery_code_used',
  'api_key_created', 'api_key_revoked', 'scoped_token_issued', 'user_created', 'user_updated',
  'user_deleted', 'session_revoked', 'tenant_created', 'tenant_updated', 'permission_denied',
  'signing_key_rotated', 'llm_request', 'llm_result', 'guard_blocked', 'rate_limited', 'model_changed',
  'guard_policy_changed', 'limit_policy_changed', 'invite_created', 'system_prompt_changed',
  'master_key_rotated', 'tenant_key_shredded', 'retention_changed', 'legal_hold_changed', 'retention_purge',
  'conversations_exported', 'job_dead_lettered', 'job_retried', 'job_discarded',
];

/** An instant of a `datetime-local` field as RFC 3339, or '' when empty. */
function isoOf(input) {
  if (!input.value) return '';
  const t = new Date(input.value);
  return Number.isNaN(t.getTime()) ? '' : t.toISOString();
}

/** The audit log: a search of the trail on the server (kind, user, request, client address,
 *  time range), newest first, 100 events a page with older pages on demand; each event shows
 *  its place in its tenant's hash chain. */
function events(box) {
  const PAGE = 100;
  const kind = h('select', { name: 'kind' }, h('option', { value: '' }, 'All events'), EVENT_KINDS.map((k) => h('option', { value: k }, k)));
  const user = h('input', { name: 'user', type: 'search', placeholder: 'user id', autocomplete: 'off', spellcheck: 'false' });
  const request = h('input', { name: 'request_id', type: 'search', placeholder: 'X-Request-Id', autocomplete: 'off', spellcheck: 'false' });
  const ip = h('input', { name: 'ip', type: 'search', placeholder: '203.0.113.7', autocomplete: 'off', spellcheck: 'false' });
  const since = h('input', { name: 'since', type: 'datetime-local' });
  const until = h('input', { name: 'until', type: 'datetime-local' });
  const status = h('p', { class: 'muted small', role: 'status' });
  const list = h('div', {});
  const more = h('button', { type: 'button', class: 'ghost', hidden: true }, 'Load older events');
  const filters = h(
    'form',
    { class: 'inline-form', role: 'search', 'aria-label': 'Search the audit log' },
    field('Event', kind),
    field('User', user),
    field('Request', request),
    field('Client address', ip),
    field('From', since),
    field('To', until),
    h('button', { type: 'submit' }, 'Search'),
    h('button', { type: 'reset', class: 'ghost' }, 'Clear'),
  );
  clear(box).append(
    h('p', { class: 'muted' }, 'Every event is a link of its tenant\u2019s hash chain; check the whole trail with ', h('code', {}, 'palisade audit verify'), '. Nobody can change or delete events.'),
    filters,
    status,
    list,
    more,
  );
  let shown = [];
  let cursor = null;
  let generation = 0;
  function query(before) {
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (kind.value) q.set('kind', kind.value);
    for (const [k, input] of [['user', user], ['request_id', request], ['ip', ip]]) {
      if (input.value.trim()) q.set(k, input.value.trim());
    }
    if (isoOf(since)) q.set('since', isoOf(since));
    if (isoOf(until)) q.set('until', isoOf(until));
    if (before != null) q.set('before', String(before));
    return '/api/admin/security-events?' + q;
  }
  // A cell that narrows the search to its value when clicked.
  function pick(input, value, label, chars) {
    return h(
      'button',
      { type: 'button', class: 'link small', title: value, onclick: () => { input.value = value; search(); } },
      h('span', { class: 'sr-only' }, `${label} `),
      h('code', {}, value.slice(0, chars)),
    );
  }
  function draw() {
    clear(list).append(
      table(
        ['When', 'Chain #', 'Event', 'User', 'By', 'Client', 'Request', 'Facts'],
        shown.map((e) => [
          fmtDate(e.created_at),
          e.chain_seq != null ? h('span', { title: 'hash ' + (e.hash || '') }, String(e.chain_seq)) : '',
          e.kind,
          e.user_id ? pick(user, e.user_id, 'Show the events of user', 8) : '',
          e.actor_id ? pick(user, e.actor_id, 'Show the events of user', 8) : '',
          [e.ip, e.user_agent].filter(Boolean).join(' · '),
          e.request_id ? pick(request, e.request_id, 'Show the events of request', 12) : '',
          h('span', { title: JSON.stringify(e.detail || {}) }, summary(e)),
        ]),
        'Audit log',
      ),
    );
  }
  async function page(before) {
    const mine = generation;
    more.disabled = true;
    try {
      const r = await api.api('GET', query(before));
      if (mine !== generation) return;
      const got = Array.isArray(r) ? r : r.events || [];
      shown = before == null ? got : shown.concat(got);
      cursor = got.length === PAGE ? got[got.length - 1].seq : null;
      more.hidden = cursor == null;
      status.textContent = shown.length
        ? `${shown.length} event${shown.length === 1 ? '' : 's'}, newest first${cursor == null ? '' : '; older ones on request'}`
        : 'No event matches.';
      draw();
    } catch (e) {
      if (mine === generation) failed(list, e);
    } finally {
      more.disabled = false;
    }
  }
  function search() {
    generation += 1;
    shown = [];
    loading(list);
    page(null);
  }
  filters.addEventListener('submit', (e) => {
    e.preventDefault();
    search();
  });
  filters.addEventListener('reset', () => setTimeout(search, 0));
  kind.addEventListener('change', search);
  more.addEventListener('click', () => page(cursor));
  search();
}

/** Background jobs; dead letters can be retried or discarded. */
function jobs(box) {
  const state = h(
    'select',
    { name: 'state' },
    [['dead', 'Dead letters'], ['queued', 'Queued'], ['running', 'Running'], ['done', 'Done'], ['', 'All']].map(([v, t]) => h('option', { value: v }, t)),
  );
  const list = h('div', {});
  clear(box).append(h('form', { class: 'inline-form' }, field('Show', state)), list);
  state.addEventListener('change', draw);
  async function act(method, path, done) {
    try {
      await api.api(method, path);
      toast(done, 'info');
      draw();
    } catch (ex) {
      toast(errorText(ex), 'error');
    }
  }
  async function draw() {
    loading(list);
    try {
      const r = await api.api('GET', '/api/admin/jobs?limit=200' + (state.value ? '&state=' + state.value : ''));
      const js = r.jobs || [];
      clear(list).append(
        js.length ? null : h('p', { class: 'muted' }, state.value === 'dead' ? 'No dead letters: every job succeeded or is still being tried.' : 'No jobs.'),
        table(
          ['#', 'Kind', 'State', 'Attempts', 'Next run', 'Last error', ''],
          js.map((j) => [
            String(j.id),
            j.kind,
            j.state,
            `${j.attempts} / ${j.max_attempts}`,
            j.state === 'queued' ? fmtDate(j.run_at) : '',
            j.last_error || '',
            j.state === 'dead'
              ? h(
                  'span',
                  { class: 'row-actions' },
                  h('button', { class: 'ghost small', type: 'button', 'aria-label': `Retry job ${j.id}`, onclick: () => act('POST', `/api/admin/jobs/${j.id}/retry`, `Job ${j.id} queued again`) }, 'Retry'),
                  h('button', { class: 'danger small', type: 'button', 'aria-label': `Discard job ${j.id}`, onclick: () => act('DELETE', `/api/admin/jobs/${j.id}`, `Job ${j.id} discarded`) }, 'Discard'),
                )
              : '',
          ]),
          'Jobs',
        ),
      );
    } catch (e) {
      failed(list, e);
    }
  }
  draw();
}

/** Retention of the caller's tenant (or any, for platform admins) and legal holds. */
async function retention(box) {
  loading(box);
  let v;
  try {
    v = await api.api('GET', '/api/admin/retention');
  } catch (e) {
    failed(box, e);
    return;
  }
  const tenantId = session.me && session.me.tenant_id;
  const own = (v.tenants || []).find((t) => t.tenant_id === tenantId) || {};
  const days = h('input', { name: 'days', type: 'number', min: 0, max: 3650, value: own.days ?? '', placeholder: String(v.default_days) });
  const hold = h('input', { name: 'legal_hold', type: 'checkbox' });
  hold.checked = !!own.legal_hold;
  const form = h(
    'form',
    { class: 'inline-form', novalidate: true },
    field('Keep conversations (days; empty: default, 0: forever)', days, `The server default is ${v.default_days ? v.default_days + ' days' : 'forever'}.`),
    h('label', { class: 'check' }, hold, ' Legal hold on this tenant (nothing is purged)'),
    h('button', { class: 'primary', type: 'submit' }, 'Save retention'),
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      await api.api('PUT', '/api/admin/retention/tenants/' + tenantId, {
        days: days.value === '' ? null : Number(days.value),
        legal_hold: hold.checked,
      });
      announce('Saved');
      toast('Saved', 'info');
    } catch (ex) {
      toast(errorText(ex), 'error');
    }
  });
  const who = h('input', { name: 'user_id', required: true, placeholder: 'user id' });
  const why = h('input', { name: 'reason', maxlength: 500, placeholder: 'case or matter' });
  const holdForm = h('form', { class: 'inline-form', novalidate: true }, field('User', who), field('Reason', why), h('button', { class: 'ghost', type: 'submit' }, 'Put on hold'));
  const holds = h('div', {});
  async function setHold(user, on, reason, tenant) {
    try {
      const q = tenant && tenant !== tenantId ? '?tenant=' + tenant : '';
      await api.api('PUT', `/api/admin/retention/users/${user}${q}`, { hold: on, reason: reason || '' });
      const fresh = await api.api('GET', '/api/admin/retention');
      v.user_holds = fresh.user_holds;
      drawHolds();
    } catch (ex) {
      toast(errorText(ex), 'error');
    }
  }
  holdForm.addEventListener('submit', (e) => {
    e.preventDefault();
    if (who.value.trim()) setHold(who.value.trim(), true, why.value.trim());
  });
  function drawHolds() {
    clear(holds).append(
      table(
        ['User', 'Reason', 'Since', 'By', ''],
        (v.user_holds || []).map((x) => [
          h('code', { class: 'small' }, x.user_id),
          x.reason,
          fmtDate(x.created_at),
          x.created_by,
          h('button', { class: 'ghost small', type: 'button', onclick: () => setHold(x.user_id, false, '', x.tenant_id) }, 'Release'),
        ]),
        'Legal holds',
      ),
    );
  }
  clear(box).append(form, h('h3', {}, 'Legal holds on users'), holdForm, holds);
  drawHolds();
}

// What each policy field means, in the order the form shows them.
const GUARD_FIELDS = [
  ['injection', 'Prompt injection and jailbreaks (input)'],
  ['pii', 'Personal data in prompts'],
  ['secret', 'Secrets and keys in prompts'],
  ['toxicity', 'Abusive or harmful language in prompts'],
  ['output_pii', 'Personal data in answers'],
  ['output_secret', 'Secrets in answers'],
  ['output_toxicity', 'Abusive language in answers'],
  ['leak', 'Answer reveals the system prompt'],
  ['unsafe_markup', 'Unsafe links and outside images in answers'],
];
const GUARD_ACTIONS = ['allow', 'log', 'redact', 'pseudonymise', 'block'];

/** A tenant's content-guard policy: per zone and category, inherit or an action. */
async function guardPolicy(box) {
  loading(box);
  let tenants;
  try {
    if (session.can('tenants:manage')) {
      const r = await api.api('GET', '/api/admin/tenants');
      tenants = Array.isArray(r) ? r : r.tenants || [];
    } else {
      tenants = [{ id: session.me.tenant_id, name: 'Your tenant' }];
    }
  } catch (e) {
    failed(box, e);
    return;
  }
  const picker = h('select', { id: 'guard-tenant', name: 'tenant' }, tenants.map((t) => h('option', { value: t.id }, t.name)));
  const form = h('div', {});
  picker.addEventListener('change', () => draw(picker.value));
  clear(box).append(
    h('p', { class: 'muted' }, 'What the content guard does with each finding, per trust zone: internal models run inside the organisation, external ones outside it. “Inherit” keeps the server-wide setting (shown in brackets). Changes apply at once and are stored.'),
    field('Tenant', picker),
    form,
  );
  draw(picker.value);

  async function draw(tenant) {
    loading(form);
    let v;
    try {
      v = await api.api('GET', `/api/admin/guard/tenants/${encodeURIComponent(tenant)}`);
    } catch (e) {
      failed(form, e);
      return;
    }
    const ov = v.overrides || {};
    // Thresholds travel as 32-bit floats (0.6499999…): show three decimals.
    const round = (x) => (x === null || x === undefined ? '' : String(Math.round(x * 1000) / 1000));
    const select = (zone, key) => {
      const current = (ov[zone] || {})[key] || '';
      const inherited = v.defaults[zone][key];
      return h(
        'select',
        { name: `${zone}.${key}`, 'aria-label': `${zone === 'internal' ? 'Internal' : 'External'} models: ${GUARD_FIELDS.find((f) => f[0] === key)[1]}` },
        h('option', { value: '', selected: current === '' }, `inherit (${inherited})`),
        GUARD_ACTIONS.map((a) => h('option', { value: a, selected: current === a }, a)),
      );
    };
    const threshold = h('input', {
      name: 'injection_threshold',
      type: 'number',
      min: 0.05,
      max: 1,
      step: 0.01,
      value: round(ov.injection_threshold),
      placeholder: round(v.defaults.injection_threshold),
    });
    const prompt = h('textarea', { name: 'system_prompt', rows: 3, maxlength: 2000 }, ov.system_prompt || '');
    const status = h('p', { class: 'small', role: 'status' });
    const body = h(
      'form',
      { class: 'stack', novalidate: true },
      v.enabled ? null : h('p', { class: 'error', role: 'alert' }, 'The content guard is turned off on this server (guard.enabled = false): nothing below applies.'),
      table(
        ['Finding', 'Internal models', 'External models'],
        GUARD_FIELDS.map(([key, label]) => [label, select('internal', key), select('external', key)]),
        'Guard actions',
      ),
      field('Injection threshold (0.05–1; lower blocks more)', threshold, 'Empty: the server-wide ' + round(v.defaults.injection_threshold) + '.'),
      field('Extra rules for the hardened system prompt', prompt, 'Added to every conversation of this tenant; keep it short, every word costs time on each request.'),
      h('div', { class: 'toolbar' },
        h('button', { class: 'primary', type: 'submit' }, 'Save policy'),
        h('button', {
          class: 'ghost',
          type: 'button',
          onclick: async () => {
            try {
              await api.api('DELETE', `/api/admin/guard/tenants/${encodeURIComponent(tenant)}`);
              announce('Guard policy reset');
              draw(tenant);
            } catch (ex) {
              toast(errorText(ex), 'error');
            }
          },
        }, 'Reset to defaults'),
        status),
    );
    body.addEventListener('submit', async (e) => {
      e.preventDefault();
      const policy = { internal: {}, external: {} };
      for (const el of body.querySelectorAll('select')) {
        const [zone, key] = el.name.split('.');
        if (el.value) policy[zone][key] = el.value;
      }
      if (threshold.value !== '') policy.injection_threshold = Number(threshold.value);
      if (prompt.value.trim()) policy.system_prompt = prompt.value.trim();
      try {
        await api.api('PUT', `/api/admin/guard/tenants/${encodeURIComponent(tenant)}`, policy);
        status.textContent = 'Saved';
        status.className = 'small success';
        announce('Guard policy saved');
      } catch (ex) {
        status.textContent = errorText(ex);
        status.className = 'small error';
      }
    });
    clear(form).append(body);
  }
}
