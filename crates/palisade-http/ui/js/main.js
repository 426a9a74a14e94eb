// The application shell: session resume, hash routes, navigation, theme.
import * as api from './api.js';
import { h, clear, toast } from './dom.js';
import { loginView, registerView, passwordChangeView, enrolView } from './views/login.js';
import { chatView } from './views/chat.js';
import { settingsView } from './views/settings.js';
import { adminView } from './views/admin.js';

const app = document.getElementById('app');

export const session = {
  me: null,
  providers: { password: true, sso: false, registration: 'closed' },
  can(perm) {
    const p = (this.me && this.me.permissions) || [];
    return p.includes(perm);
  },
};

// Theme: the system's unless the user picked one; "system" follows the system's changes.
const darkQuery = window.matchMedia('(prefers-color-scheme: dark)');
export function applyTheme(theme) {
  const t = theme || localStorage.getItem('palisade.theme') || 'system';
  const dark = t === 'dark' || (t === 'system' && darkQuery.matches);
  document.documentElement.dataset.theme = dark ? 'dark' : 'light';
}
darkQuery.addEventListener('change', () => applyTheme());
applyTheme();

/** Ends the session here and shows the sign-in screen. */
export async function signOut() {
  await api.logout();
  session.me = null;
  go('#/login');
}

export function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

api.setSignedOutHandler(() => {
  session.me = null;
  toast('Your session has ended. Please sign in again.', 'info');
  go('#/login');
});

export async function loadMe() {
  session.me = await api.api('GET', '/api/auth/me');
  return session.me;
}

function nav(active) {
  const link = (hash, label, key) =>
    h('a', { href: hash, class: 'navlink', 'aria-current': active === key ? 'page' : null }, label);
  const isAdmin = ['users:manage', 'tenants:manage', 'roles:read', 'models:manage', 'audit:read', 'usage:read'].some(
    (p) => session.can(p),
  );
  return h(
    'header',
    { class: 'topbar' },
    h('a', { href: '#/chat', class: 'brand', 'aria-label': 'Palisade, home' },
      h('img', { src: '/ui/favicon.svg', alt: '', width: 22, height: 22 }), 'Palisade'),
    h(
      'nav',
      { 'aria-label': 'Main' },
      link('#/chat', 'Chat', 'chat'),
      link('#/settings', 'Settings', 'settings'),
      isAdmin ? link('#/admin', 'Admin', 'admin') : null,
    ),
    h(
      'div',
      { class: 'who' },
      h('span', { class: 'muted', title: 'Signed in as' }, session.me ? session.me.username : ''),
      h(
        'button',
        { class: 'ghost small', type: 'button', onclick: signOut },
        'Sign out',
      ),
    ),
  );
}

/** Renders a signed-in page: the top bar and the view's content. */
function page(active, content) {
  clear(app);
  app.append(nav(active), content);
}

function bare(content) {
  clear(app);
  app.append(content);
}

async function route() {
  const hash = location.hash || '#/chat';
  const [, top = 'chat', ...rest] = hash.split('/');
  if (top === 'login' || top === 'register') {
    if (api.signedIn()) return go('#/chat');
    return bare(top === 'login' ? loginView() : registerView());
  }
  if (!api.signedIn()) return go('#/login');
  if (!session.me) {
    try {
      await loadMe();
    } catch (e) {
      if (e.code === 'password_change_required') return bare(passwordChangeView());
      if (e.code === 'mfa_enrolment_required') return bare(enrolView());
      toast(e.message, 'error');
      return go('#/login');
    }
  }
  if (session.me.must_change_password) return bare(passwordChangeView());
  switch (top) {
    case 'settings':
      return page('settings', settingsView(rest[0]));
    case 'admin':
      return page('admin', adminView(rest[0]));
    default:
      return page('chat', chatView(rest[0]));
  }
}

window.addEventListener('hashchange', route);

async function start() {
  try {
    session.providers = await api.api('GET', '/api/auth/providers');
  } catch {
    // The login form still works without it.
  }
  const params = new URLSearchParams(location.search);
  if (params.has('sso_error')) {
    toast('Single sign-on failed: ' + params.get('sso_error'), 'error');
  }
  if (params.has('sso') || params.has('sso_error')) {
    history.replaceState(null, '', '/' + location.hash);
  }
  await api.resume();
  route();
}

start();
