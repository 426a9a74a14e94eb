// Model output is untrusted: markdown is rendered by marked, then sanitised by DOMPurify
// (no scripts, no event handlers, no forms or frames, no `javascript:`/`data:` links), and
// images from other hosts are replaced by links, so an answer cannot load anything on its own.
import { Marked } from '../vendor/marked.esm.js';
import DOMPurify from '../vendor/purify.es.mjs';
import { h } from './dom.js';

const marked = new Marked({ gfm: true, breaks: false, async: false });

const purify = DOMPurify(window);
purify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A') {
    const href = node.getAttribute('href') || '';
    if (!/^(https?:|mailto:|#)/i.test(href)) node.removeAttribute('href');
    node.setAttribute('rel', 'noopener noreferrer nofollow');
    node.setAttribute('target', '_blank');
  }
  if (node.tagName === 'IMG') {
    // Never auto-load: an image URL could carry data out (markdown image exfiltration).
    const src = node.getAttribute('src') || '';
    const alt = node.getAttribute('alt') || 'image';
    const a = node.ownerDocument.createElement('a');
    a.textContent = '[image: ' + alt + ']';
    if (/^https?:/i.test(src)) {
      a.setAttribute('href', src);
      a.setAttribute('rel', 'noopener noreferrer nofollow');
      a.setAttribute('target', '_blank');
    }
    node.replaceWith(a);
  }
});

const CONFIG = {
  ALLOWED_TAGS: [
    'p', 'br', 'hr', 'strong', 'em', 'del', 'code', 'pre', 'blockquote', 'ul', 'ol', 'li',
    'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'a', 'img', 'table', 'thead', 'tbody', 'tr', 'th', 'td',
    'span', 'input',
  ],
  ALLOWED_ATTR: ['href', 'title', 'alt', 'src', 'class', 'type', 'checked', 'disabled', 'align'],
  ALLOW_DATA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};

/** Renders markdown into `target` (replacing its content); code blocks get a copy button. */
export function renderMarkdown(target, text) {
  const html = marked.parse(text || '');
  const frag = purify.sanitize(html, CONFIG);
  for (const input of frag.querySelectorAll('input')) {
    if (input.getAttribute('type') !== 'checkbox') input.remove();
    else input.setAttribute('disabled', '');
  }
  for (const pre of frag.querySelectorAll('pre')) {
    const code = pre.textContent;
    const btn = h(
      'button',
      { class: 'copy small', type: 'button', 'aria-label': 'Copy code' },
      'Copy',
    );
    btn.addEventListener('click', async () => {
      await navigator.clipboard.writeText(code).catch(() => {});
      btn.textContent = 'Copied';
      setTimeout(() => (btn.textContent = 'Copy'), 1500);
    });
    const wrap = h('div', { class: 'code' }, btn);
    pre.replaceWith(wrap);
    wrap.append(pre);
  }
  target.replaceChildren(frag);
}
