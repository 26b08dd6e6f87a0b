// meshscope's UI: a hash router (the URL holds the view, so every view is a deep link), the
// header's search box (trace id or x-request-id), the theme, and the demo phase.
// Views live in graph.js (topology) and traces.js (search, waterfall, request).

import { getJSON, route, token, setToken } from './dom.js';
import { Topology } from './graph.js';
import { TraceSearch, TraceView } from './traces.js';

const views = {
  topology: new Topology(document.getElementById('view-topology')),
  traces: new TraceSearch(document.getElementById('view-traces')),
  trace: new TraceView(document.getElementById('view-trace')),
};

/** `#/trace/<id>?span=…` → { name: 'trace', args: ['<id>'], params }. */
export function parseHash(hash) {
  const raw = hash.replace(/^#\/?/, '');
  const [path, qs] = [raw.split('?')[0], raw.split('?').slice(1).join('?')];
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { name: parts[0] || 'topology', args: parts.slice(1), params: new URLSearchParams(qs || '') };
}

let current = null;
function render() {
  const r = parseHash(location.hash);
  // `request/<id>` and `trace/<id>` share the waterfall view.
  const key = r.name === 'request' ? 'trace' : r.name;
  const view = views[key] || views.topology;
  for (const [k, v] of Object.entries(views)) {
    const on = v === view;
    v.root.hidden = !on;
    if (!on && v.leave) v.leave();
  }
  for (const a of document.querySelectorAll('nav a')) {
    const on = a.dataset.view === (key === 'trace' ? 'traces' : key);
    if (on) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  current = view;
  view.show(r);
}
window.addEventListener('hashchange', render);

/** Opens whatever the box holds: a 32-hex trace id if such a trace exists, else a request id. */
async function find(q) {
  const err = document.getElementById('find-error');
  err.textContent = '';
  q = q.trim();
  if (!q) return;
  if (/^[0-9a-fA-F]{32}$/.test(q)) {
    try {
      await getJSON('api/v1/traces/' + encodeURIComponent(q.toLowerCase()));
      location.hash = route('trace/' + q.toLowerCase());
      return;
    } catch (e) {
      if (e.status !== 404 && e.status !== 400) { err.textContent = e.message; return; }
    }
  }
  location.hash = route('request/' + q);
}
document.querySelector('.find').addEventListener('submit', (e) => {
  e.preventDefault();
  find(document.getElementById('find').value);
});

// Theme: the system's unless chosen; the choice is remembered.
const THEME_KEY = 'meshscope.theme';
function applyTheme(t) {
  if (t) document.documentElement.dataset.theme = t;
  else delete document.documentElement.dataset.theme;
}
applyTheme(localStorage.getItem(THEME_KEY));
document.querySelector('.theme').addEventListener('click', () => {
  const dark = document.documentElement.dataset.theme
    ? document.documentElement.dataset.theme === 'dark'
    : matchMedia('(prefers-color-scheme: dark)').matches;
  const t = dark ? 'light' : 'dark';
  localStorage.setItem(THEME_KEY, t);
  applyTheme(t);
  if (current && current.redraw) current.redraw();
});

// Demo phase, when meshscope runs `demo` (the endpoint is absent otherwise).
async function demoPhase() {
  const el = document.querySelector('.demo');
  try {
    const d = await getJSON('api/v1/demo');
    const phase = d && (d.phase?.name ?? d.phase ?? d.name);
    if (phase == null) { el.hidden = true; return; }
    const of = Number.isInteger(d.phase?.index) && Array.isArray(d.phases)
      ? ` ${d.phase.index + 1}/${d.phases.length}` : '';
    el.textContent = `demo phase${of}: ` + (typeof phase === 'string' ? phase : JSON.stringify(phase));
    if (d.description || d.phase?.description) el.title = d.description || d.phase.description;
    el.hidden = false;
    setTimeout(demoPhase, 5000);
  } catch {
    el.hidden = true;
  }
}

// Tokens: `#token=<token>` (a link an operator hands out; the fragment never reaches the
// server) is kept for this tab and removed from the address bar. A 401 opens the login
// dialog; signing in re-renders the view.
if (location.hash.startsWith('#token=')) {
  setToken(decodeURIComponent(location.hash.slice('#token='.length)));
  history.replaceState(null, '', location.pathname + location.search + '#/topology');
}
const login = document.getElementById('login');
window.addEventListener('meshscope:unauthorized', () => {
  if (login.open) return;
  login.querySelector('.login-error').textContent = token() ? 'That token was not accepted.' : '';
  login.showModal();
  login.querySelector('input').focus();
});
login.querySelector('form').addEventListener('submit', () => {
  const input = login.querySelector('input');
  setToken(input.value.trim());
  input.value = '';
  render();
  demoPhase();
});

render();
demoPhase();
