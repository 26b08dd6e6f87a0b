// The trace views: the search form with a duration-over-time scatter and a result list
// (GET api/v1/traces), and the waterfall of one trace (GET api/v1/traces/<id>) or of one
// x-request-id (GET api/v1/requests/<id>) with the access-log lines of every proxy.

import { h, s, clear, route, getJSON, fmt, serviceColours, activate } from './dom.js';

const LOOKBACKS = ['5m', '15m', '1h', '6h', '24h', '7d'];
const LOOKBACK_MS = { '5m': 3e5, '15m': 9e5, '1h': 3.6e6, '6h': 2.16e7, '24h': 8.64e7, '7d': 6.048e8 };
const FIELDS = ['service', 'operation', 'tags', 'min_duration', 'max_duration'];
const EDGE_FIELDS = ['source', 'destination', 'status'];

export class TraceSearch {
  constructor(root) {
    this.root = root;
    const field = (name, label, placeholder) => h('label', {}, h('span', {}, label),
      h('input', { name, placeholder, 'data-testid': 'search-' + name.replace('_', '-'), autocomplete: 'off', spellcheck: 'false' }));
    this.form = h('form', { class: 'toolbar search', 'data-testid': 'trace-search' },
      field('service', 'Service', 'productpage.default'),
      field('operation', 'Operation', 'reviews…:9080/*'),
      field('tags', 'Tags', 'http.status_code=503 response_flags=UO'),
      field('min_duration', 'Min duration', '100ms'),
      field('max_duration', 'Max duration', '2s'),
      h('label', {}, h('span', {}, 'Time'), h('select', { name: 'lookback', 'data-testid': 'search-lookback' },
        LOOKBACKS.map((l) => h('option', { value: l }, 'last ' + l)), h('option', { value: 'custom' }, 'custom…'))),
      h('span', { class: 'custom', hidden: true },
        h('label', {}, h('span', {}, 'From'), h('input', { type: 'datetime-local', name: 'from', step: 1, 'data-testid': 'search-from' })),
        h('label', {}, h('span', {}, 'To'), h('input', { type: 'datetime-local', name: 'to', step: 1, 'data-testid': 'search-to' }))),
      h('label', {}, h('span', {}, 'Limit'), h('input', { name: 'limit', type: 'number', min: 1, max: 1000, 'data-testid': 'search-limit' })),
      h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'error', value: 'true', 'data-testid': 'search-error' }), h('span', {}, 'errors only')),
      h('button', { type: 'submit', 'data-testid': 'search-submit' }, 'Search'));
    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      const f = new FormData(this.form);
      const p = {};
      for (const k of [...FIELDS, 'lookback', 'limit', 'error']) p[k] = f.get(k) || '';
      if (p.lookback === 'custom') {
        for (const k of ['from', 'to']) p[k] = f.get(k) ? new Date(f.get(k)).toISOString() : '';
      }
      p.t = Date.now(); // a new search even when nothing changed
      location.hash = route('traces', p);
    });
    this.edgeNote = h('p', { class: 'edge-note', hidden: true, 'data-testid': 'edge-search' });
    this.scatter = h('div', { class: 'scatter', 'data-testid': 'scatter' });
    this.results = h('div', { class: 'results', 'data-testid': 'results' });
    this.form.elements.lookback.addEventListener('change', () => {
      this.form.querySelector('.custom').hidden = this.form.elements.lookback.value !== 'custom';
    });
    root.append(this.form, this.edgeNote, this.scatter, this.results);
  }

  show(r) {
    const p = r.params;
    for (const k of FIELDS) this.form.elements[k].value = p.get(k) || '';
    const lookback = p.get('lookback') || '1h';
    this.form.elements.lookback.value = lookback;
    this.form.querySelector('.custom').hidden = lookback !== 'custom';
    for (const k of ['from', 'to']) this.form.elements[k].value = toLocalInput(p.get(k));
    this.form.elements.limit.value = p.get('limit') || '20';
    this.form.elements.error.checked = p.get('error') === 'true';
    const edge = EDGE_FIELDS.some((k) => p.get(k));
    this.edgeNote.hidden = !edge;
    if (edge) {
      this.edgeNote.replaceChildren('Sample requests on the edge ',
        h('strong', {}, p.get('source') || 'any source'), ' → ', h('strong', {}, p.get('destination') || 'any destination'),
        p.get('status') ? ` with status ${p.get('status')}` : '', ' ',
        h('a', { href: route('traces', {}) }, 'clear'));
    }
    const q = new URLSearchParams();
    const keys = edge ? [...EDGE_FIELDS, 'min_duration', 'max_duration'] : [...FIELDS, 'error'];
    for (const k of keys) if (p.get(k)) q.set(k, p.get(k));
    if (lookback === 'custom') {
      for (const k of ['from', 'to']) if (p.get(k)) q.set(k, p.get(k));
    } else {
      q.set('from', new Date(Date.now() - (LOOKBACK_MS[lookback] || 3.6e6)).toISOString());
    }
    q.set('limit', p.get('limit') || '20');
    this.search('api/v1/traces?' + q.toString());
  }

  async search(url) {
    this.results.replaceChildren(h('p', { class: 'muted' }, 'Searching…'));
    clear(this.scatter);
    try {
      const res = await getJSON(url);
      this.render(res);
    } catch (e) {
      this.results.replaceChildren(h('p', { class: 'error', 'data-testid': 'search-error-text' }, 'Search failed: ' + e.message));
    }
  }

  render(res) {
    const traces = res.traces || [];
    if (!traces.length) {
      this.results.replaceChildren(h('p', { class: 'muted', 'data-testid': 'no-results' }, 'No traces match.'));
      return;
    }
    this.scatter.replaceChildren(scatter(traces));
    const rows = traces.map((t) => h('tr', { 'data-testid': 'result-row', class: t.error_count ? 'err' : '' },
      h('td', {}, h('a', { href: route('trace/' + t.trace_id) }, fmt.time(t.start_unix_nano))),
      h('td', {}, `${t.root_service || '?'}: ${t.root_name || ''}`),
      h('td', { class: 'num' }, fmt.ns(t.duration_ns)),
      h('td', { class: 'num' }, String(t.span_count)),
      h('td', { class: 'num' + (t.error_count ? ' bad' : '') }, String(t.error_count)),
      h('td', { class: 'flags' }, (t.response_flags || []).join(' ')),
      h('td', { class: 'mono' }, t.trace_id)));
    const out = [h('table', { class: 'grid results-table' },
      h('thead', {}, h('tr', {}, ['start', 'root', 'duration', 'spans', 'errors', 'flags', 'trace id'].map((c) => h('th', {}, c)))),
      h('tbody', {}, rows))];
    if (res.samples?.length) {
      out.push(h('h3', {}, 'Sampled requests'), h('table', { class: 'grid', 'data-testid': 'samples' },
        h('thead', {}, h('tr', {}, ['time', 'code', 'flags', 'duration', 'reporter', 'proxy', 'request'].map((c) => h('th', {}, c)))),
        h('tbody', {}, res.samples.map((x) => h('tr', {},
          h('td', {}, x.start_time), h('td', { class: 'num' }, String(x.response_code)), h('td', { class: 'flags' }, x.response_flags || ''),
          h('td', { class: 'num' }, fmt.ms(x.duration_ms)), h('td', {}, x.reporter || ''), h('td', {}, x.proxy || ''),
          h('td', {}, x.request_id ? h('a', { href: route('request/' + x.request_id) }, x.request_id) : ''))))));
    }
    this.results.replaceChildren(...out);
  }
}

/** An ISO time → the value of a datetime-local input (local time, seconds). */
export function toLocalInput(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 19);
}

/** Duration over time: one dot per trace, red when it has errors; a dot opens its trace. */
function scatter(traces) {
  const W = 900, H = 170, L = 64, B = 24, T = 10;
  const t0 = Math.min(...traces.map((t) => t.start_unix_nano));
  const t1 = Math.max(...traces.map((t) => t.start_unix_nano));
  const dmax = Math.max(...traces.map((t) => t.duration_ns)) || 1;
  const x = (t) => L + (t1 === t0 ? (W - L - 10) / 2 : ((t - t0) / (t1 - t0)) * (W - L - 20));
  const y = (d) => H - B - (d / dmax) * (H - B - T);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, width: '100%', class: 'scatter-svg', role: 'group', 'aria-label': 'Trace duration over time' },
    s('line', { x1: L, y1: H - B, x2: W, y2: H - B, class: 'axis' }),
    s('line', { x1: L, y1: T, x2: L, y2: H - B, class: 'axis' }),
    s('text', { x: L - 6, y: T + 8, 'text-anchor': 'end', class: 'tick' }, fmt.ns(dmax)),
    s('text', { x: L - 6, y: H - B, 'text-anchor': 'end', class: 'tick' }, '0'),
    s('text', { x: L, y: H - 6, class: 'tick' }, fmt.time(t0).slice(11, 19)),
    s('text', { x: W - 4, y: H - 6, 'text-anchor': 'end', class: 'tick' }, fmt.time(t1).slice(11, 19)));
  for (const t of traces) {
    const dot = s('circle', {
      cx: x(t.start_unix_nano), cy: y(t.duration_ns), r: 5, class: 'pt' + (t.error_count ? ' err' : ''),
      'data-testid': 'scatter-point', 'aria-label': `${t.root_service || ''} ${fmt.ns(t.duration_ns)}`,
    }, s('title', {}, `${t.root_service || '?'}: ${t.root_name || ''}, ${fmt.ns(t.duration_ns)}, ${t.error_count} errors`));
    activate(dot, () => { location.hash = route('trace/' + t.trace_id); });
    svg.append(dot);
  }
  return svg;
}

// ---------------------------------------------------------------------------------------
// One trace

const ACCESS_COLUMNS = [
  ['start_time', 'time'], ['proxy', 'proxy'], ['reporter', 'reporter'],
  [(r) => `${r.source_workload || '?'} → ${r.destination_workload || r.destination_service_name || '?'}`, 'from → to'],
  [(r) => `${r.method || ''} ${r.authority || ''}${r.path || ''}`, 'request'],
  ['response_code', 'code'], ['response_flags', 'flags'], ['duration_ms', 'ms'],
  ['upstream_host', 'upstream host'], ['upstream_cluster', 'upstream cluster'], ['response_code_details', 'details'],
];

export class TraceView {
  constructor(root) {
    this.root = root;
    this.data = null;
  }

  show(r) {
    const kind = r.name; // 'trace' or 'request'
    const id = r.args[0] || '';
    const key = kind + '/' + id;
    this.spanId = r.params.get('span') || '';
    this.traceIndex = Number(r.params.get('t') || 0);
    this.hash = (extra) => route(key, { t: this.traceIndex || '', span: this.spanId, ...extra });
    if (this.key === key && this.data) { this.render(); return; }
    this.key = key;
    this.data = null;
    this.root.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
    this.load(kind, id).then((d) => {
      if (this.key !== key) return;
      this.data = d;
      this.render();
    }).catch((e) => {
      if (this.key !== key) return;
      this.root.replaceChildren(h('p', { class: 'error', 'data-testid': 'trace-error' },
        (kind === 'request' ? `Request id ${id}: ` : `Trace ${id}: `) + e.message));
    });
  }

  async load(kind, id) {
    if (kind === 'request') {
      const v = await getJSON('api/v1/requests/' + encodeURIComponent(id));
      return { title: 'x-request-id ' + v.request_id, traces: v.traces || [], access: v.access_log || [] };
    }
    const t = await getJSON('api/v1/traces/' + encodeURIComponent(id));
    // The access-log lines of the trace's requests, from every proxy.
    let access = [];
    for (const rid of (t.request_ids || []).slice(0, 5)) {
      try {
        const v = await getJSON('api/v1/requests/' + encodeURIComponent(rid));
        access = access.concat(v.access_log || []);
      } catch { /* the trace still shows */ }
    }
    access.sort((a, b) => String(a.start_time).localeCompare(String(b.start_time)));
    return { title: 'trace ' + t.trace_id, traces: [t], access };
  }

  render() {
    const d = this.data;
    const t = d.traces[Math.min(this.traceIndex, d.traces.length - 1)];
    const parts = [h('h2', { 'data-testid': 'trace-title' }, d.title)];
    if (d.traces.length > 1) {
      parts.push(h('p', {}, 'Traces with this request id: ', d.traces.map((x, i) => [
        i ? ' · ' : '', h('a', { href: route(this.key, { t: i }) }, x.trace_id)])));
    }
    if (t) {
      parts.push(summary(t));
      if (t.warnings?.length) parts.push(h('ul', { class: 'warnings' }, t.warnings.map((w) => h('li', {}, w))));
      parts.push(h('div', { class: 'split' }, this.waterfall(t), this.details(t)));
    } else {
      parts.push(h('p', { class: 'muted' }, 'No spans were stored for this request; its access-log lines follow.'));
    }
    parts.push(h('h3', {}, 'Access-log lines, every proxy, in time order'), accessLog(d.access));
    const focusedSpan = document.activeElement?.dataset?.spanId;
    this.root.replaceChildren(...parts);
    if (focusedSpan) this.root.querySelector(`[data-span-id="${CSS.escape(focusedSpan)}"]`)?.focus();
  }

  waterfall(t) {
    const ROWH = 24, LABEL = 320, BARW = 640, TOP = 28, W = LABEL + BARW + 120;
    const total = Math.max(1, t.duration_ns);
    const xs = (ns) => LABEL + (ns / total) * BARW;
    const svg = s('svg', {
      width: W, height: TOP + t.spans.length * ROWH + 8, class: 'waterfall', 'data-testid': 'waterfall',
      role: 'group', 'aria-label': 'Span waterfall',
    });
    for (let i = 0; i <= 4; i++) {
      const ns = (total * i) / 4;
      svg.append(s('line', { x1: xs(ns), y1: TOP - 6, x2: xs(ns), y2: TOP + t.spans.length * ROWH, class: 'grid-line' }),
        s('text', { x: xs(ns), y: TOP - 10, 'text-anchor': i === 0 ? 'start' : i === 4 ? 'end' : 'middle', class: 'tick' }, fmt.ns(ns)));
    }
    const colourOf = serviceColours(t.spans.map((x) => x.service_name));
    const crit = new Map();
    for (const c of t.critical_path || []) {
      if (!crit.has(c.span_id)) crit.set(c.span_id, []);
      crit.get(c.span_id).push(c);
    }
    t.spans.forEach((sp, i) => {
      const y = TOP + i * ROWH;
      const colour = colourOf(sp.service_name);
      const bx = xs(sp.offset_ns), bw = Math.max(2, (sp.duration_ns / total) * BARW);
      const label = `${sp.service_name}  ${sp.name}`;
      const maxChars = Math.floor((LABEL - 24 - sp.depth * 12) / 6.4);
      const row = s('g', {
        class: 'span' + (sp.error ? ' error' : '') + (sp.span_id === this.spanId ? ' selected' : ''),
        'data-testid': 'span-row', 'data-span-id': sp.span_id,
        'aria-label': `${sp.service_name} ${sp.name}, ${fmt.ns(sp.duration_ns)}${sp.error ? ', error' : ''}${sp.response_flags ? ', flags ' + sp.response_flags : ''}`,
      },
      s('title', {}, label),
      s('rect', { x: 0, y, width: W, height: ROWH, class: 'rowbg' }),
      s('rect', { x: 6 + sp.depth * 12, y: y + 7, width: 10, height: 10, rx: 2, fill: colour }),
      s('text', { x: 22 + sp.depth * 12, y: y + 16, class: 'label' }, label.length > maxChars ? label.slice(0, maxChars - 1) + '…' : label),
      s('rect', { x: bx, y: y + 5, width: bw, height: ROWH - 10, rx: 2, fill: colour, class: 'bar' }));
      for (const c of crit.get(sp.span_id) || []) {
        row.append(s('rect', { x: xs(c.start_offset_ns), y: y + ROWH - 6, width: Math.max(1, xs(c.end_offset_ns) - xs(c.start_offset_ns)), height: 3, class: 'crit', 'data-testid': 'critical-segment' }));
      }
      const after = [fmt.ns(sp.duration_ns), sp.http_status_code ? String(sp.http_status_code) : '', sp.response_flags || ''].filter(Boolean).join('  ');
      row.append(s('text', { x: bx + bw + 5, y: y + 16, class: 'after' + (sp.error || sp.response_flags ? ' bad' : '') }, after));
      activate(row, () => { this.spanId = sp.span_id; location.hash = this.hash({ span: sp.span_id }); });
      svg.append(row);
    });
    return h('div', { class: 'wf-wrap' }, svg,
      h('p', { class: 'legend' }, h('span', { class: 'crit-key' }), ' critical path  ', h('span', { class: 'err-key' }), ' error / Envoy response flag'));
  }

  details(t) {
    const sp = t.spans.find((x) => x.span_id === this.spanId);
    if (!sp) return h('aside', { class: 'panel', 'data-testid': 'span-details', hidden: true });
    const map = (m, testid) => h('table', { class: 'kv', 'data-testid': testid }, h('tbody', {},
      Object.entries(m || {}).map(([k, v]) => h('tr', {}, h('th', { scope: 'row' }, k), h('td', { class: 'mono' }, v)))));
    const close = h('button', { type: 'button', class: 'close', 'aria-label': 'Close span details' }, '×');
    close.addEventListener('click', () => { this.spanId = ''; location.hash = this.hash({ span: '' }); });
    return h('aside', { class: 'panel', 'data-testid': 'span-details' }, close,
      h('h2', {}, sp.name),
      h('p', { class: 'muted' }, sp.service_name, ' · ', sp.kind, sp.error ? ' · ' : '', sp.error ? h('span', { class: 'badge failure' }, 'error') : ''),
      h('table', { class: 'kv' }, h('tbody', {}, [
        ['span id', sp.span_id], ['parent', sp.parent_span_id || '–'], ['start', sp.start_time],
        ['duration', fmt.ns(sp.duration_ns)], ['self time', fmt.ns(sp.self_ns)], ['on critical path', fmt.ns(sp.critical_path_ns)],
        ['status', sp.status_code + (sp.status_message ? ': ' + sp.status_message : '')],
        ['HTTP', [sp.http_method, sp.http_status_code, sp.http_url].filter((x) => x != null).join(' ') || '–'],
        ['upstream cluster', sp.upstream_cluster || '–'], ['node', sp.node_id || '–'],
      ].map(([k, v]) => h('tr', {}, h('th', { scope: 'row' }, k), h('td', {}, String(v))))),
      sp.request_id ? h('tr', {}, h('th', { scope: 'row' }, 'x-request-id'), h('td', {}, h('a', { href: route('request/' + sp.request_id) }, sp.request_id))) : null),
      sp.response_flag_meanings?.length ? [h('h3', {}, 'Envoy response flags'), h('ul', { class: 'flags-list', 'data-testid': 'span-flags' },
        sp.response_flag_meanings.map((f) => h('li', {}, h('strong', {}, f.flag), ': ', f.meaning || 'unknown flag')))] : null,
      h('h3', {}, 'Attributes'), map(sp.attributes, 'span-attributes'),
      Object.keys(sp.resource_attributes || {}).length ? [h('h3', {}, 'Resource'), map(sp.resource_attributes, 'span-resource')] : null,
      sp.events?.length ? [h('h3', {}, 'Events'), h('ul', {}, sp.events.map((e) => h('li', {}, `${fmt.ns(e.offset_ns)} ${e.name} `,
        Object.entries(e.attributes || {}).map(([k, v]) => `${k}=${v}`).join(' '))))] : null,
      sp.links?.length ? [h('h3', {}, 'Links'), h('ul', {}, sp.links.map((l) => h('li', {}, h('a', { href: route('trace/' + l.trace_id) }, l.trace_id), ' ', l.span_id)))] : null);
  }
}

function summary(t) {
  const colourOf = serviceColours(t.spans.map((x) => x.service_name));
  return h('div', { class: 'trace-summary', 'data-testid': 'trace-summary' },
    h('span', {}, 'trace ', h('code', { 'data-testid': 'trace-id' }, t.trace_id)),
    h('span', {}, t.start_time), h('span', {}, fmt.ns(t.duration_ns)),
    h('span', {}, `${t.span_count} spans`),
    h('span', { class: t.error_count ? 'bad' : '' }, `${t.error_count} errors`),
    h('span', { class: 'services' }, (t.services || []).map((sv) => {
      const chip = h('span', { class: 'chip' }, sv);
      chip.style.borderColor = colourOf(sv); // CSSOM, allowed by the CSP
      return chip;
    })));
}

function accessLog(rows) {
  if (!rows.length) return h('p', { class: 'muted', 'data-testid': 'access-log-empty' }, 'No access-log lines carry this request id.');
  return h('div', { class: 'scroll' }, h('table', { class: 'grid access', 'data-testid': 'access-log' },
    h('thead', {}, h('tr', {}, ACCESS_COLUMNS.map(([, name]) => h('th', {}, name)))),
    h('tbody', {}, rows.map((r) => h('tr', { 'data-testid': 'access-log-row', class: (r.response_code >= 500 || r.response_code === 0) ? 'err' : '' },
      ACCESS_COLUMNS.map(([k]) => {
        const v = typeof k === 'function' ? k(r) : r[k];
        return h('td', { class: k === 'response_flags' && v ? 'flags bad' : '' }, v == null ? '' : String(v));
      }))))));
}
