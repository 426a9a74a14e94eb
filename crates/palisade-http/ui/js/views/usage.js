// Usage: the caller's own (Settings → Usage) and, for `usage:read`, the tenant's or every
// tenant's (Admin → Usage). A bar chart of tokens per day (SVG built from DOM nodes, styled by
// classes only, so the strict CSP holds), totals, limits with what is left, and a CSV export.
import * as api from '../api.js';
import { h, clear, toast } from '../dom.js';
import { errorText } from '../messages.js';
import { table } from './settings.js';

const SVG = 'http://www.w3.org/2000/svg';

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

const num = (n) => Number(n || 0).toLocaleString();

/** Tokens per day as bars (prompt and completion stacked), with a text alternative. */
export function chart(days, caption) {
  const w = 720;
  const hgt = 180;
  const pad = 28;
  const max = Math.max(1, ...days.map((d) => d.total_tokens));
  const bw = (w - pad) / Math.max(1, days.length);
  const y = (v) => hgt - pad - ((hgt - 2 * pad) * v) / max;
  const bars = days.map((d, i) => {
    const x = pad + i * bw + 1;
    const prompt = s('rect', { x, y: y(d.prompt_tokens), width: Math.max(1, bw - 2), height: hgt - pad - y(d.prompt_tokens), class: 'bar-in' });
    const total = s('rect', { x, y: y(d.total_tokens), width: Math.max(1, bw - 2), height: y(d.prompt_tokens) - y(d.total_tokens), class: 'bar-out' });
    const g = s('g', {}, prompt, total);
    g.append(s('title', {}, `${d.day}: ${num(d.total_tokens)} tokens (${num(d.prompt_tokens)} in, ${num(d.completion_tokens)} out), ${num(d.requests)} requests`));
    return g;
  });
  const first = days[0] ? days[0].day : '';
  const last = days.length ? days[days.length - 1].day : '';
  const svg = s(
    'svg',
    { viewBox: `0 0 ${w} ${hgt}`, class: 'chart', role: 'img', 'aria-label': `${caption}: ${num(days.reduce((a, d) => a + d.total_tokens, 0))} tokens from ${first} to ${last}` },
    s('line', { x1: pad, y1: hgt - pad, x2: w, y2: hgt - pad, class: 'axis' }),
    s('text', { x: pad, y: 14, class: 'chart-label' }, `${num(max)} tokens`),
    s('text', { x: pad, y: hgt - 8, class: 'chart-label' }, first),
    s('text', { x: w - 4, y: hgt - 8, class: 'chart-label end' }, last),
    ...bars,
  );
  return h(
    'figure',
    { class: 'chart-box' },
    svg,
    h('figcaption', { class: 'muted' }, caption, ' — ', h('span', { class: 'key-in' }, 'prompt'), ' and ', h('span', { class: 'key-out' }, 'answer'), ' tokens per day'),
  );
}

function totals(t, label) {
  return h(
    'dl',
    { class: 'stats', 'aria-label': label },
    ...[
      ['Requests', num(t.requests)],
      ['Tokens', num(t.total_tokens)],
      ['Compute', `${Number(t.compute_seconds || 0).toFixed(1)} s`],
      ['Blocked by the guard', num(t.guard_blocks)],
      ['Refused by a limit', num(t.rate_limited)],
    ].map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v))),
  );
}

function wait(secs) {
  if (!secs) return '';
  if (secs < 120) return `${secs} s`;
  if (secs < 3600) return `${Math.round(secs / 60)} min`;
  if (secs < 86400) return `${Math.floor(secs / 3600)} h ${Math.round((secs % 3600) / 60)} min`;
  return `${Math.floor(secs / 86400)} d ${Math.round((secs % 86400) / 3600)} h`;
}

/** Downloads `path` (with the caller's token) as a file. */
async function download(path, name) {
  try {
    const res = await api.raw('GET', path);
    if (!res.ok) throw new api.ApiError(res.status, await res.json().catch(() => ({})), res.headers);
    const url = URL.createObjectURL(await res.blob());
    const a = h('a', { href: url, download: name, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (e) {
    toast(errorText(e), 'error');
  }
}

function windowForm(onChange, extra) {
  const to = new Date().toISOString().slice(0, 10);
  const fromD = new Date(Date.now() - 29 * 86400_000).toISOString().slice(0, 10);
  const from = h('input', { type: 'date', value: fromD, 'aria-label': 'From' });
  const until = h('input', { type: 'date', value: to, 'aria-label': 'To' });
  const form = h(
    'form',
    { class: 'toolbar', onsubmit: (e) => { e.preventDefault(); onChange(); } },
    h('label', {}, 'From ', from),
    h('label', {}, 'To ', until),
    extra || null,
    h('button', { type: 'submit', class: 'ghost small' }, 'Show'),
  );
  const query = () => `from=${encodeURIComponent(from.value)}&to=${encodeURIComponent(until.value)}`;
  return { form, query };
}

/** Settings → Usage: one's own. */
export function ownUsage(panel) {
  const body = h('div', { 'aria-live': 'polite' });
  const win = windowForm(() => load());
  const csv = h('button', { type: 'button', class: 'ghost small', onclick: () => download(`/api/usage?${win.query()}&format=csv`, 'usage.csv') }, 'Download CSV');
  panel.append(win.form, body, csv);
  async function load() {
    clear(body).append(h('p', { class: 'muted' }, 'Loading…'));
    try {
      const u = await api.api('GET', `/api/usage?${win.query()}`);
      clear(body).append(
        h('h3', {}, 'Today'),
        totals(u.today, 'Today'),
        h('h3', {}, 'Limits'),
        u.limits.length
          ? table(
            ['Limit', 'Left', 'Of', 'Full again in'],
            u.limits.map((l) => [l.name, num(l.remaining), num(l.limit), wait(l.reset_seconds)]),
            'Your limits',
          )
          : h('p', {}, 'No limits apply to you.'),
        h('h3', {}, `${u.from} to ${u.to}`),
        totals(u.total, 'In the window'),
        chart(u.days, 'Your tokens'),
        u.models.length
          ? table(['Model', 'Requests', 'Tokens', 'Compute (s)'], u.models.map((m) => [m.model, num(m.requests), num(m.total_tokens), Number(m.compute_seconds).toFixed(1)]), 'By model')
          : null,
      );
    } catch (e) {
      clear(body).append(h('p', { class: 'error', role: 'alert' }, errorText(e)));
    }
  }
  load();
}

/** Admin → Usage: the tenant's (or every tenant's), by user and model. */
export async function adminUsage(box, usernames) {
  const body = h('div', { 'aria-live': 'polite' });
  const win = windowForm(() => load());
  const csv = h('button', { type: 'button', class: 'ghost small', onclick: () => download(`/api/admin/usage?${win.query()}&format=csv`, 'usage.csv') }, 'Download CSV');
  clear(box).append(win.form, body, csv);
  async function load() {
    clear(body).append(h('p', { class: 'muted' }, 'Loading…'));
    try {
      const u = await api.api('GET', `/api/admin/usage?${win.query()}`);
      const names = await usernames();
      clear(body).append(
        totals(u.total, 'In the window'),
        chart(u.days, 'All tokens'),
        table(
          ['User', 'Requests', 'Tokens', 'Compute (s)', 'Guard blocks', 'Refused'],
          u.users
            .sort((a, b) => b.total_tokens - a.total_tokens)
            .map((r) => [names[r.user_id] || r.user_id, num(r.requests), num(r.total_tokens), Number(r.compute_seconds).toFixed(1), num(r.guard_blocks), num(r.rate_limited)]),
          'By user',
        ),
        table(['Model', 'Requests', 'Tokens', 'Compute (s)'], u.models.map((m) => [m.model, num(m.requests), num(m.total_tokens), Number(m.compute_seconds).toFixed(1)]), 'By model'),
      );
    } catch (e) {
      clear(body).append(h('p', { class: 'error', role: 'alert' }, errorText(e)));
    }
  }
  load();
}
