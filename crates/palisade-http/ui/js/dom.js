// Small DOM helpers: elements are built with properties and text nodes, never from HTML
// strings (the only HTML the UI inserts is sanitised markdown, see md.js).

/** h('button', {class: 'x', onclick: fn}, 'text', child...) */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v);
    } else if (k === 'class') {
      el.className = v;
    } else if (k === 'dataset') {
      Object.assign(el.dataset, v);
    } else if (k === 'value' || k === 'checked' || k === 'selected' || k === 'disabled') {
      el[k] = v;
    } else {
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function $(sel, root = document) {
  return root.querySelector(sel);
}

let liveTimer;
/** Announces a short text to screen readers. */
export function announce(text) {
  const live = document.getElementById('live');
  if (!live) return;
  clearTimeout(liveTimer);
  live.textContent = text;
  liveTimer = setTimeout(() => {
    live.textContent = '';
  }, 4000);
}

/** A transient message; errors stay until dismissed. */
export function toast(text, kind = 'info') {
  const box = document.getElementById('toasts');
  if (!box) return;
  const t = h(
    'div',
    { class: 'toast ' + kind, role: kind === 'error' ? 'alert' : 'status' },
    h('span', {}, text),
    h('button', { class: 'icon', 'aria-label': 'Dismiss', onclick: () => t.remove() }, '×'),
  );
  box.append(t);
  if (kind !== 'error') setTimeout(() => t.remove(), 5000);
}

/** A labelled form field. */
export function field(label, input, hint) {
  const id = input.id || 'f' + Math.random().toString(36).slice(2, 9);
  input.id = id;
  const hintEl = hint ? h('small', { class: 'hint', id: id + '-hint' }, hint) : null;
  if (hintEl) input.setAttribute('aria-describedby', id + '-hint');
  return h('div', { class: 'field' }, h('label', { for: id }, label), input, hintEl);
}

/** A modal dialog (native <dialog>); resolves with the form's values or null. */
export function dialog(title, body, actions) {
  return new Promise((resolve) => {
    const form = h('form', { method: 'dialog', class: 'dialog-body' });
    const dlg = h('dialog', { 'aria-labelledby': 'dlg-title' }, form);
    const buttons = actions.map((a) =>
      h('button', { type: a.submit ? 'submit' : 'button', class: a.class || '', value: a.value }, a.label),
    );
    form.append(h('h2', { id: 'dlg-title' }, title), body, h('div', { class: 'actions' }, buttons));
    buttons.forEach((b, i) => {
      if (!actions[i].submit) {
        b.addEventListener('click', () => {
          dlg.close();
          resolve(null);
        });
      }
    });
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const values = Object.fromEntries(new FormData(form).entries());
      values._action = e.submitter ? e.submitter.value : '';
      dlg.close();
      resolve(values);
    });
    dlg.addEventListener('close', () => {
      dlg.remove();
      resolve(null);
    });
    document.body.append(dlg);
    dlg.showModal();
  });
}

export function fmtDate(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}
