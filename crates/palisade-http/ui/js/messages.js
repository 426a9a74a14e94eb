// Errors in plain words: what happened and what to do.

const GUARD = {
  injection: 'it looks like an attempt to override the assistant’s instructions (prompt injection)',
  secret: 'it contains a secret such as a password, API key or private key',
  pii: 'it contains personal data (for example an e-mail address, phone or card number)',
  toxicity: 'it contains abusive, threatening or otherwise harmful language',
  leak: 'the answer started to reveal the assistant’s hidden instructions',
  unsafe_markup: 'the answer contained unsafe links or images',
};

export function guardText(categories, stage = 'message') {
  const why = (categories || []).map((c) => GUARD[c] || c);
  const reason = why.length ? why.join('; ') : 'it broke the content policy';
  return stage === 'answer'
    ? `The answer was stopped by the content guard: ${reason}.`
    : `Your message was not sent to the model: ${reason}. Rephrase it without that content, or ask your administrator about the policy.`;
}

/** `42 s`, `5 min`, `3 h 20 min`. */
export function waitText(secs) {
  if (secs < 120) return `${secs} s`;
  if (secs < 3600) return `${Math.round(secs / 60)} min`;
  if (secs < 86400) return `${Math.floor(secs / 3600)} h ${Math.round((secs % 3600) / 60)} min`;
  return `${Math.floor(secs / 86400)} d ${Math.round((secs % 86400) / 3600)} h`;
}

/** The limit named in a refusal: "budget reached (tokens per user: …); …" → "tokens per user: …". */
function budgetName(message) {
  const m = /\(([^)]*)\)/.exec(message || '');
  return m ? m[1] : 'a limit';
}

export function errorText(e) {
  if (!e) return 'Something went wrong.';
  const wait = e.retryAfter ? ` Try again in ${e.retryAfter} s.` : ' Try again in a moment.';
  switch (e.code) {
    case 'invalid_credentials':
      return 'Wrong username or password.';
    case 'login_throttled':
      return 'Too many failed attempts.' + wait;
    case 'account_locked':
      return 'This account is locked after too many failed logins. An administrator can unlock it.';
    case 'rate_limited':
      return 'Too many requests.' + wait;
    case 'quota_exceeded':
      return `Your usage budget is spent (${budgetName(e.message)}).` + (e.retryAfter ? ` Enough is back in ${waitText(e.retryAfter)}.` : '') + ' See Settings → Usage.';
    case 'too_many_streams':
      return 'Too many answers are being written for you at once. Wait for one to finish.' + wait;
    case 'request_too_large':
      return 'This request needs more than your whole budget. Ask for a shorter answer or send a shorter message.';
    case 'mfa_failed':
      return 'That code is wrong or was already used.';
    case 'guard_blocked':
      return guardText(e.categories);
    case 'overloaded':
      return 'The model is busy with other requests.' + wait;
    case 'upstream_unavailable':
    case 'upstream_error':
    case 'upstream_timeout':
      return 'The model provider did not answer. Try again, or pick another model.';
    case 'model_not_allowed':
      return 'You may not use this model. Pick another one.';
    case 'context_overflow':
      return 'This conversation is too long for the model. Start a new conversation.';
    case 'password_change_required':
      return 'You must change your password first.';
    case 'weak_password':
    case 'invalid_username':
    case 'conflict':
    case 'disabled':
    case 'invalid_invite':
      return e.message;
    default:
      if (e.status === 0 || e.name === 'TypeError') return 'The server cannot be reached.';
      if (e.status >= 500) return 'The server had a problem (' + e.code + ').' + wait;
      return e.message || 'Request failed.';
  }
}
