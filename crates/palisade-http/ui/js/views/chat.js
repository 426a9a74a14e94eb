// The chat screen: conversations on the left, the conversation and the composer on the right.
import * as api from '../api.js';
import { h, clear, toast, announce, dialog, field } from '../dom.js';
import { renderMarkdown } from '../md.js';
import { errorText, guardText } from '../messages.js';
import { go } from '../main.js';

const state = {
  sessions: [],
  models: [],
  model: localStorage.getItem('palisade.model') || '',
  current: null,
  controller: null,
};

function groupOf(iso) {
  const d = new Date(iso);
  const today = new Date();
  today.setHours(0, 0, 0, 0);
  const days = Math.floor((today - new Date(d.getFullYear(), d.getMonth(), d.getDate())) / 86400000);
  if (days <= 0) return 'Today';
  if (days === 1) return 'Yesterday';
  if (days < 7) return 'Previous 7 days';
  if (days < 30) return 'Previous 30 days';
  return 'Older';
}

export function chatView(sessionId) {
  state.current = sessionId || null;
  const list = h('nav', { class: 'conv-list', 'aria-label': 'Conversations' });
  const search = h('input', {
    type: 'search',
    placeholder: 'Search conversations',
    'aria-label': 'Search conversations',
    oninput: () => drawList(list, search.value),
  });
  const sidebar = h(
    'aside',
    { class: 'sidebar', id: 'sidebar' },
    h('button', { class: 'primary wide', type: 'button', onclick: () => go('#/chat') }, '+ New chat'),
    search,
    list,
  );
  const messages = h('div', {
    class: 'messages',
    role: 'log',
    'aria-live': 'polite',
    'aria-label': 'Conversation',
    'aria-busy': 'false',
  });
  const picker = h('select', { 'aria-label': 'Model', class: 'model-picker', onchange: () => {
    state.model = picker.value;
    localStorage.setItem('palisade.model', picker.value);
  } });
  const input = h('textarea', {
    rows: 1,
    placeholder: 'Message Palisade…',
    'aria-label': 'Message',
    maxlength: 32000,
  });
  const send = h('button', { class: 'primary', type: 'submit' }, 'Send');
  const stop = h('button', { class: 'danger', type: 'button', hidden: true, onclick: () => stopGeneration() }, 'Stop');
  const form = h(
    'form',
    { class: 'composer' },
    input,
    h('div', { class: 'composer-actions' }, picker, h('span', { class: 'muted small hint-keys' }, 'Enter to send · Shift+Enter for a new line · Esc to stop'), stop, send),
  );
  const toggle = h('button', {
    class: 'ghost small sidebar-toggle',
    type: 'button',
    'aria-controls': 'sidebar',
    'aria-expanded': 'false',
    onclick: () => {
      const open = sidebar.classList.toggle('open');
      toggle.setAttribute('aria-expanded', String(open));
    },
  }, 'Conversations');
  const main = h(
    'main',
    { id: 'main', class: 'chat-main' },
    h('div', { class: 'chat-head' }, toggle, h('h1', { class: 'chat-title', id: 'chat-title' }, 'New chat')),
    messages,
    form,
  );
  const view = h('div', { class: 'chat' }, sidebar, main);

  input.addEventListener('input', () => autosize(input));
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  view.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && state.controller) {
      e.preventDefault();
      stopGeneration();
    }
  });
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text || state.controller) return;
    input.value = '';
    autosize(input);
    sendMessage(text, { messages, send, stop, list, input });
  });

  loadModels(picker);
  loadSessions(list).then(() => {
    const s = state.sessions.find((x) => x.id === state.current);
    if (s) document.getElementById('chat-title').textContent = s.title || 'Conversation';
  });
  if (state.current) loadMessages(messages, state.current);
  else messages.append(emptyState());
  queueMicrotask(() => input.focus());
  return view;
}

function emptyState() {
  return h(
    'div',
    { class: 'empty' },
    h('h2', {}, 'How can I help?'),
    h('p', { class: 'muted' }, 'Prompts and answers stay on your organisation’s servers. Every message passes the content guard.'),
  );
}

function autosize(t) {
  t.style.height = 'auto';
  t.style.height = Math.min(t.scrollHeight, 240) + 'px';
}

async function loadModels(picker) {
  try {
    const r = await api.api('GET', '/api/models');
    state.models = r.models || [];
  } catch (e) {
    toast(errorText(e), 'error');
    return;
  }
  clear(picker);
  if (!state.models.some((m) => m.name === state.model)) {
    const def = state.models.find((m) => m.default) || state.models[0];
    state.model = def ? def.name : '';
  }
  for (const m of state.models) {
    const label = m.name + (m.trust_zone === 'external' ? ' (external)' : '') + (m.available === false ? ' – unavailable' : '');
    picker.append(h('option', { value: m.name, selected: m.name === state.model }, label));
  }
  picker.value = state.model;
}

async function loadSessions(list) {
  try {
    const r = await api.api('GET', '/api/chat/sessions?limit=100&sort=updated_at_desc');
    state.sessions = r.sessions || [];
  } catch (e) {
    toast(errorText(e), 'error');
  }
  drawList(list, '');
}

function drawList(list, filter) {
  clear(list);
  const f = (filter || '').toLowerCase();
  const items = state.sessions.filter(
    (s) => !f || (s.title || '').toLowerCase().includes(f) || (s.last_message_preview || '').toLowerCase().includes(f),
  );
  if (!items.length) {
    list.append(h('p', { class: 'muted small pad' }, f ? 'No conversation matches.' : 'No conversations yet.'));
    return;
  }
  let group = null;
  let ul = null;
  for (const s of items) {
    const g = groupOf(s.updated_at);
    if (g !== group) {
      group = g;
      ul = h('ul', { 'aria-label': g });
      list.append(h('h2', { class: 'group' }, g), ul);
    }
    const current = s.id === state.current;
    ul.append(
      h(
        'li',
        { class: 'conv' + (current ? ' current' : '') },
        h('a', { href: '#/chat/' + s.id, 'aria-current': current ? 'page' : null, title: s.title }, s.title || 'Untitled'),
        h('button', { class: 'icon', type: 'button', 'aria-label': 'Rename ' + (s.title || 'conversation'), onclick: () => rename(s, list) }, '✎'),
        h('button', { class: 'icon', type: 'button', 'aria-label': 'Delete ' + (s.title || 'conversation'), onclick: () => remove(s, list) }, '×'),
      ),
    );
  }
}

async function rename(s, list) {
  const input = h('input', { name: 'title', value: s.title || '', maxlength: 255, required: true });
  const r = await dialog('Rename conversation', field('Title', input), [
    { label: 'Cancel' },
    { label: 'Save', submit: true, class: 'primary', value: 'save' },
  ]);
  if (!r || !r.title.trim()) return;
  try {
    await api.api('PATCH', '/api/chat/sessions/' + s.id, { title: r.title.trim() });
    s.title = r.title.trim();
    drawList(list, '');
    if (s.id === state.current) document.getElementById('chat-title').textContent = s.title;
    announce('Conversation renamed');
  } catch (e) {
    toast(errorText(e), 'error');
  }
}

async function remove(s, list) {
  const r = await dialog(
    'Delete conversation?',
    h('p', {}, `“${s.title || 'Untitled'}” and all its messages will be deleted. This cannot be undone.`),
    [
      { label: 'Cancel' },
      { label: 'Delete', submit: true, class: 'danger', value: 'delete' },
    ],
  );
  if (!r) return;
  try {
    await api.api('DELETE', '/api/chat/sessions/' + s.id);
    state.sessions = state.sessions.filter((x) => x.id !== s.id);
    announce('Conversation deleted');
    if (s.id === state.current) go('#/chat');
    else drawList(list, '');
  } catch (e) {
    toast(errorText(e), 'error');
  }
}

async function loadMessages(box, id) {
  clear(box);
  try {
    const r = await api.api('GET', `/api/chat/sessions/${id}/messages?limit=200`);
    for (const m of r.messages || []) {
      box.append(m.role === 'user' ? userBubble(m.content) : answerBubble(m.content, m.metadata));
    }
    if (!(r.messages || []).length) box.append(emptyState());
  } catch (e) {
    if (e.status === 404) {
      toast('This conversation does not exist any more.', 'error');
      go('#/chat');
      return;
    }
    toast(errorText(e), 'error');
  }
  box.scrollTop = box.scrollHeight;
}

function userBubble(text) {
  return h('article', { class: 'msg user', 'aria-label': 'You' }, h('div', { class: 'bubble' }, text));
}

function metaLine(meta) {
  if (!meta) return null;
  const parts = [];
  if (meta.model) parts.push(meta.model);
  if (meta.completion_tokens != null) parts.push(`${meta.prompt_tokens || 0} + ${meta.completion_tokens} tokens`);
  if (meta.response_time_ms != null) parts.push((meta.response_time_ms / 1000).toFixed(2) + ' s');
  if (meta.partial) parts.push('stopped');
  if (meta.truncated_turns) parts.push(`${meta.truncated_turns} earlier turns left out`);
  return parts.join(' · ');
}

function answerBubble(text, meta) {
  const body = h('div', { class: 'bubble markdown' });
  renderMarkdown(body, text);
  const info = h('span', { class: 'meta muted small' }, metaLine(meta) || '');
  const copy = h('button', { class: 'ghost small', type: 'button', 'aria-label': 'Copy answer' }, 'Copy');
  copy.addEventListener('click', async () => {
    await navigator.clipboard.writeText(body.dataset.raw || text).catch(() => {});
    copy.textContent = 'Copied';
    setTimeout(() => (copy.textContent = 'Copy'), 1500);
  });
  body.dataset.raw = text;
  const el = h('article', { class: 'msg assistant', 'aria-label': 'Assistant' }, body, h('div', { class: 'msg-actions' }, info, copy));
  return el;
}

function errorBubble(text, kind) {
  return h('div', { class: 'msg notice ' + (kind || 'error'), role: 'alert' }, text);
}

function stopGeneration() {
  if (state.controller) state.controller.abort();
}

async function sendMessage(text, ui) {
  const { messages, send, stop, list } = ui;
  const empty = messages.querySelector('.empty');
  if (empty) empty.remove();
  messages.append(userBubble(text));
  const answer = answerBubble('', null);
  const body = answer.querySelector('.bubble');
  const info = answer.querySelector('.meta');
  body.classList.add('streaming');
  body.append(h('span', { class: 'typing', 'aria-label': 'The assistant is writing' }, '●●●'));
  messages.append(answer);
  messages.scrollTop = messages.scrollHeight;
  messages.setAttribute('aria-busy', 'true');

  const controller = new AbortController();
  state.controller = controller;
  send.hidden = true;
  stop.hidden = false;
  let content = '';
  let pending = false;
  const draw = () => {
    pending = false;
    renderMarkdown(body, content);
    body.dataset.raw = content;
    const nearBottom = messages.scrollHeight - messages.scrollTop - messages.clientHeight < 120;
    if (nearBottom) messages.scrollTop = messages.scrollHeight;
  };
  const started = performance.now();
  let newSession = null;
  let failed = false;
  try {
    const req = { message: text, stream: true };
    if (state.current) req.session_id = state.current;
    if (state.model) req.model = state.model;
    await api.stream(
      '/api/chat/message',
      req,
      (ev) => {
        if (ev.type === 'start') {
          if (!state.current) newSession = ev.session_id;
        } else if (ev.type === 'token') {
          content += ev.content;
          if (!pending) {
            pending = true;
            requestAnimationFrame(draw);
          }
        } else if (ev.type === 'end') {
          draw();
          info.textContent = metaLine(ev.metadata) || '';
        } else if (ev.type === 'error') {
          failed = true;
          draw();
          const msg = ev.code === 'guard_blocked' ? guardText(ev.categories, 'answer') : errorText({ code: ev.code, message: ev.message });
          answer.after(errorBubble(msg, ev.code === 'guard_blocked' ? 'guard' : 'error'));
        }
      },
      controller.signal,
    );
    if (!content && !failed) answer.remove();
  } catch (e) {
    if (e.name === 'AbortError') {
      draw();
      const elapsed = ((performance.now() - started) / 1000).toFixed(2);
      info.textContent = `stopped after ${elapsed} s`;
      if (!content) answer.remove();
    } else {
      answer.remove();
      messages.append(errorBubble(errorText(e), e.code === 'guard_blocked' ? 'guard' : 'error'));
    }
  } finally {
    body.classList.remove('streaming');
    const typing = body.querySelector('.typing');
    if (typing) typing.remove();
    state.controller = null;
    send.hidden = false;
    stop.hidden = true;
    messages.setAttribute('aria-busy', 'false');
    announce(failed ? 'The answer ended with an error' : 'Answer complete');
    messages.scrollTop = messages.scrollHeight;
    addRegenerate(messages, text, ui);
  }
  if (newSession) {
    state.current = newSession;
    history.replaceState(null, '', '#/chat/' + newSession);
  }
  await loadSessions(list);
  const s = state.sessions.find((x) => x.id === state.current);
  if (s) document.getElementById('chat-title').textContent = s.title || 'Conversation';
}

function addRegenerate(messages, text, ui) {
  for (const b of messages.querySelectorAll('.regen')) b.remove();
  const last = messages.querySelector('.msg.assistant:last-of-type .msg-actions');
  if (!last) return;
  last.append(
    h('button', { class: 'ghost small regen', type: 'button', onclick: () => !state.controller && sendMessage(text, ui) }, 'Regenerate'),
  );
}
