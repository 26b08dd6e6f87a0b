// DOM helpers. Everything that came from the network goes through text nodes and
// setAttribute, never through HTML parsing: no innerHTML, insertAdjacentHTML or document.write.

export const SVG_NS = 'http://www.w3.org/2000/svg';

function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** An HTML element: h('td', {class: 'num'}, 'text', otherNode). */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

/** A link inside the app: `#/<route>?<params>`, built from encoded parts only. */
export function route(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') q.set(k, v);
  }
  const qs = q.toString();
  return '#/' + path.split('/').map(encodeURIComponent).join('/') + (qs ? '?' + qs : '');
}

// The API token, when the server asks for one. It lives in this tab's sessionStorage only
// (gone when the tab closes) and travels in the Authorization header, never in a URL the
// server sees: `#token=…` links are read from the fragment, which browsers do not send.
const TOKEN_KEY = 'meshscope.token';
export function token() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; }
}
export function setToken(t) {
  try { if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY); } catch { /* storage off */ }
}

export async function getJSON(url) {
  const headers = { accept: 'application/json' };
  const t = token();
  if (t) headers.authorization = 'Bearer ' + t;
  const r = await fetch(url, { headers });
  let body = null;
  try { body = await r.json(); } catch { /* not JSON */ }
  if (!r.ok) {
    const msg = body && (body.message || body.error) ? (body.message || body.error) : r.statusText;
    const e = new Error(`${r.status}: ${msg}`);
    e.status = r.status;
    // app.js asks for a token
    if (r.status === 401) window.dispatchEvent(new CustomEvent('meshscope:unauthorized', { detail: msg }));
    throw e;
  }
  return body;
}

// Number formats.
export const fmt = {
  int: (n) => (n == null ? '–' : Math.round(n).toLocaleString('en-US')),
  rps: (n) => (n == null ? '–' : n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2)),
  pct: (f) => (f == null ? '–' : (f * 100 >= 10 ? (f * 100).toFixed(0) : (f * 100).toFixed(1)) + '%'),
  ms: (v) => (v == null ? '–' : v >= 1000 ? (v / 1000).toFixed(2) + ' s' : v >= 10 ? v.toFixed(0) + ' ms' : v.toFixed(1) + ' ms'),
  ns: (ns) => fmt.ms(ns == null ? null : ns / 1e6),
  bytes: (b) => (b == null ? '–' : b >= 1 << 20 ? (b / (1 << 20)).toFixed(1) + ' MiB' : b >= 1024 ? (b / 1024).toFixed(1) + ' KiB' : b + ' B'),
  time: (unixNs) => new Date(unixNs / 1e6).toISOString().replace('T', ' ').replace('Z', ''),
};

const PALETTE = ['#4e79a7', '#f28e2b', '#59a14f', '#b07aa1', '#76b7b2', '#edc948', '#9c755f', '#ff9da7', '#86bcb6', '#a0cbe8'];

/** Distinct colours for the services of one trace (sorted names → the same colours each time). */
export function serviceColours(names) {
  const sorted = [...new Set(names)].sort();
  const m = new Map(sorted.map((n, i) => [n, i < PALETTE.length ? PALETTE[i] : serviceColour(n)]));
  return (n) => m.get(n) || serviceColour(n);
}

/** A stable colour per service name (same name, same colour, in both themes). */
export function serviceColour(name) {
  let x = 2166136261;
  for (let i = 0; i < name.length; i++) { x ^= name.charCodeAt(i); x = Math.imul(x, 16777619); }
  const hue = (x >>> 0) % 360;
  return `hsl(${hue} 55% 55%)`;
}

/** Makes an element act as a button for the keyboard (Enter / Space) as well as the mouse. */
export function activate(el, fn) {
  el.setAttribute('tabindex', '0');
  if (!el.getAttribute('role')) el.setAttribute('role', 'button');
  el.addEventListener('click', fn);
  el.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); fn(e); }
  });
  return el;
}
