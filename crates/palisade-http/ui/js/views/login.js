// Sign-in, registration, the TOTP step, and the forced steps (password change, 2FA enrolment).
import * as api from '../api.js';
import { h, field, toast } from '../dom.js';
import { errorText } from '../messages.js';
import { session, go, loadMe, signOut } from '../main.js';
import { totpEnrolment } from './settings.js';

function card(title, ...content) {
  return h(
    'main',
    { id: 'main', class: 'center' },
    h(
      'section',
      { class: 'card auth', 'aria-labelledby': 'auth-title' },
      h('div', { class: 'logo' }, h('img', { src: '/ui/favicon.svg', alt: '', width: 40, height: 40 })),
      h('h1', { id: 'auth-title' }, title),
      ...content,
    ),
  );
}

function errorBox() {
  return h('p', { class: 'error', role: 'alert', hidden: true });
}

function showError(box, text) {
  box.textContent = text;
  box.hidden = !text;
}

export function loginView() {
  const username = h('input', { name: 'username', autocomplete: 'username', required: true });
  const password = h('input', {
    name: 'password',
    type: 'password',
    autocomplete: 'current-password',
    required: true,
  });
  const err = errorBox();
  const submit = h('button', { type: 'submit', class: 'primary wide' }, 'Sign in');
  const form = h(
    'form',
    { class: 'stack', novalidate: true },
    field('Username', username),
    field('Password', password),
    err,
    submit,
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    showError(err, '');
    if (!username.value || !password.value) {
      showError(err, 'Enter your username and password.');
      return;
    }
    submit.disabled = true;
    try {
      const r = await api.login(username.value.trim(), password.value);
      if (r.mfa_required) {
        form.replaceWith(totpStep(r.mfa_token));
        return;
      }
      await afterLogin();
    } catch (ex) {
      showError(err, errorText(ex));
      password.value = '';
      password.focus();
    } finally {
      submit.disabled = false;
    }
  });
  const extra = [];
  if (session.providers.sso) {
    extra.push(
      h('div', { class: 'or' }, h('span', {}, 'or')),
      h('a', { class: 'button wide', href: session.providers.sso_login_url || '/api/auth/oidc/login' },
        'Sign in with SSO'),
    );
  }
  if (session.providers.registration && session.providers.registration !== 'closed') {
    extra.push(h('p', { class: 'muted center-text' }, 'No account? ', h('a', { href: '#/register' }, 'Register')));
  }
  const view = card('Sign in to Palisade', form, ...extra);
  queueMicrotask(() => username.focus());
  return view;
}

function totpStep(mfaToken) {
  const code = h('input', {
    name: 'code',
    inputmode: 'numeric',
    autocomplete: 'one-time-code',
    required: true,
    maxlength: 32,
  });
  const err = errorBox();
  const submit = h('button', { type: 'submit', class: 'primary wide' }, 'Verify');
  const form = h(
    'form',
    { class: 'stack', novalidate: true },
    h('p', {}, 'Enter the 6-digit code from your authenticator app, or one of your recovery codes.'),
    field('Code', code),
    err,
    submit,
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    submit.disabled = true;
    try {
      await api.loginSecondFactor(mfaToken, code.value.trim());
      await afterLogin();
    } catch (ex) {
      showError(err, errorText(ex));
      code.value = '';
      code.focus();
    } finally {
      submit.disabled = false;
    }
  });
  queueMicrotask(() => code.focus());
  return form;
}

async function afterLogin() {
  session.me = null;
  try {
    await loadMe();
  } catch (e) {
    if (e.code === 'password_change_required' || e.code === 'mfa_enrolment_required') {
      return go('#/chat');
    }
    throw e;
  }
  go('#/chat');
}

export function registerView() {
  const mode = session.providers.registration;
  if (mode === 'closed' || !mode) {
    return card(
      'Registration is closed',
      h('p', {}, 'Accounts are created by your administrator.'),
      h('a', { href: '#/login', class: 'button wide' }, 'Back to sign in'),
    );
  }
  const username = h('input', { name: 'username', autocomplete: 'username', required: true });
  const email = h('input', { name: 'email', type: 'email', autocomplete: 'email' });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'new-password', required: true });
  const invite = mode === 'invite' ? h('input', { name: 'invite', required: true, autocomplete: 'off' }) : null;
  const err = errorBox();
  const submit = h('button', { type: 'submit', class: 'primary wide' }, 'Create account');
  const form = h(
    'form',
    { class: 'stack', novalidate: true },
    field('Username', username),
    field('E-mail (optional)', email),
    field('Password', password, 'At least 15 characters; a passphrase of several words works well.'),
    invite ? field('Invitation code', invite) : null,
    err,
    submit,
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    submit.disabled = true;
    showError(err, '');
    try {
      const body = { username: username.value.trim(), password: password.value };
      if (email.value) body.email = email.value.trim();
      if (invite) body.invite = invite.value.trim();
      await api.api('POST', '/api/auth/register', body);
      await api.login(body.username, body.password);
      await afterLogin();
    } catch (ex) {
      showError(err, errorText(ex));
    } finally {
      submit.disabled = false;
    }
  });
  return card('Create your account', form, h('p', { class: 'muted center-text' }, h('a', { href: '#/login' }, 'Back to sign in')));
}

export function passwordChangeView() {
  const current = h('input', { type: 'password', autocomplete: 'current-password', required: true });
  const next = h('input', { type: 'password', autocomplete: 'new-password', required: true });
  const again = h('input', { type: 'password', autocomplete: 'new-password', required: true });
  const err = errorBox();
  const submit = h('button', { type: 'submit', class: 'primary wide' }, 'Change password');
  const form = h(
    'form',
    { class: 'stack', novalidate: true },
    h('p', {}, 'Your administrator asks you to choose a new password before you continue.'),
    field('Current (temporary) password', current),
    field('New password', next, 'At least 15 characters, not containing your username.'),
    field('New password again', again),
    err,
    submit,
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (next.value !== again.value) {
      showError(err, 'The two new passwords differ.');
      return;
    }
    submit.disabled = true;
    try {
      const tokens = await api.api('POST', '/api/auth/password', {
        current_password: current.value,
        new_password: next.value,
      });
      api.adopt(tokens);
      toast('Password changed.', 'info');
      session.me = null;
      go('#/chat');
    } catch (ex) {
      showError(err, errorText(ex));
    } finally {
      submit.disabled = false;
    }
  });
  return card('Choose a new password', form, signOutLink());
}

export function enrolView() {
  return card(
    'Set up two-factor authentication',
    h('p', {}, 'Your role requires a second factor. Scan the code with an authenticator app to continue.'),
    totpEnrolment(() => {
      session.me = null;
      go('#/chat');
    }),
    signOutLink(),
  );
}

function signOutLink() {
  return h(
    'p',
    { class: 'center-text' },
    h('button', { type: 'button', class: 'ghost small', onclick: signOut }, 'Sign out'),
  );
}
