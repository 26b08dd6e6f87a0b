// The topology view: GET api/v1/graph drawn as SVG, left to right by the `rank` the server
// computes. The layout is a pure function of the graph (ranks, then a barycenter order with
// ids as tie-breaks), so the same traffic draws the same picture on every refresh.

import { h, s, clear, route, getJSON, fmt, activate } from './dom.js';

const WINDOWS = ['1m', '5m', '15m', '1h', 'custom'];
const TYPES = [['workload', 'Workload'], ['app', 'App'], ['versioned_app', 'Versioned app'], ['service', 'Service']];
const LABELS = [['none', 'No edge labels'], ['rps', 'Requests/s'], ['error', 'Error %'], ['p95', 'p95 latency'], ['share', 'Traffic share']];
const REFRESH = [['0', 'Off'], ['5', '5 s'], ['10', '10 s'], ['30', '30 s'], ['60', '1 min']];
const COL = 165, ROW = 92, PAD = 40, R = 17;

/** The view's settings as they sit in the URL, with defaults. */
function settings(params) {
  const g = (k, d) => params.get(k) || d;
  return {
    window: g('window', '5m'), from: g('from', ''), to: g('to', ''), type: g('type', 'versioned_app'),
    ns: g('ns', ''), labels: g('labels', 'rps'), refresh: g('refresh', '10'),
    node: g('node', ''), edge: g('edge', ''),
  };
}

function nodeName(n) {
  switch (n.kind) {
    case 'service': return n.service || n.id;
    case 'app': return n.app || n.id;
    case 'workload': return n.workload || n.app || n.id;
    default: return n.workload || n.service || n.app || 'unknown';
  }
}

/** Layers from `rank`; inside a layer, barycenter of callers, versions of one app kept together. */
export function layout(graph) {
  const byId = new Map(graph.nodes.map((n) => [n.id, n]));
  const ranks = new Map();
  for (const n of graph.nodes) {
    if (!ranks.has(n.rank)) ranks.set(n.rank, []);
    ranks.get(n.rank).push(n);
  }
  const preds = new Map(graph.nodes.map((n) => [n.id, []]));
  for (const e of graph.edges) {
    if (byId.has(e.source) && byId.has(e.target)) preds.get(e.target).push(e.source);
  }
  const rankList = [...ranks.keys()].sort((a, b) => a - b);
  const index = new Map(); // node id → position in its layer
  const groupKey = (n) => (n.version && n.app ? `${n.namespace}/${n.app}` : `#${n.id}`);
  const columns = [];
  for (const r of rankList) {
    const layer = ranks.get(r);
    const bary = new Map(layer.map((n) => {
      const ps = preds.get(n.id).filter((p) => index.has(p)).map((p) => index.get(p));
      return [n.id, ps.length ? ps.reduce((a, b) => a + b, 0) / ps.length : Infinity];
    }));
    const groups = new Map();
    for (const n of layer) {
      const k = groupKey(n);
      if (!groups.has(k)) groups.set(k, []);
      groups.get(k).push(n);
    }
    const gs = [...groups.entries()].map(([k, ns]) => {
      const finite = ns.map((n) => bary.get(n.id)).filter(Number.isFinite);
      return { k, ns, b: finite.length ? finite.reduce((a, b) => a + b, 0) / finite.length : Infinity };
    });
    gs.sort((a, b) => (a.b - b.b) || (a.k < b.k ? -1 : a.k > b.k ? 1 : 0));
    const ordered = [];
    for (const g of gs) {
      g.ns.sort((a, b) => ((a.version || '') < (b.version || '') ? -1 : (a.version || '') > (b.version || '') ? 1 : a.id < b.id ? -1 : 1));
      ordered.push(...g.ns);
    }
    ordered.forEach((n, i) => index.set(n.id, i));
    columns.push(ordered);
  }
  const tallest = Math.max(1, ...columns.map((c) => c.length));
  const pos = new Map();
  columns.forEach((col, ci) => {
    const top = PAD + ((tallest - col.length) * ROW) / 2;
    col.forEach((n, i) => pos.set(n.id, { x: PAD + 60 + ci * COL, y: top + i * ROW, col: ci }));
  });
  // App boxes: versions of one app side by side in one layer.
  const boxes = [];
  for (const col of columns) {
    let i = 0;
    while (i < col.length) {
      const k = groupKey(col[i]);
      let j = i;
      while (j + 1 < col.length && groupKey(col[j + 1]) === k) j++;
      if (!k.startsWith('#') && j > i) boxes.push({ app: col[i].app, namespace: col[i].namespace, first: col[i].id, last: col[j].id });
      i = j + 1;
    }
  }
  return {
    pos, boxes,
    width: PAD * 2 + 120 + Math.max(0, columns.length - 1) * COL,
    height: PAD * 2 + (tallest - 1) * ROW + 60,
  };
}

function edgeLabel(e, mode) {
  switch (mode) {
    case 'rps': return fmt.rps(e.rps) + ' rps';
    case 'error': return e.requests ? fmt.pct(e.error_rate) : '';
    case 'p95': return e.latency_ms && e.latency_ms.p95 != null ? fmt.ms(e.latency_ms.p95) : '';
    case 'share': return fmt.pct(e.traffic_share);
    default: return '';
  }
}

/** Control points of an edge: a forward S-curve, or an arc below for same/backward layers. */
function curve(a, b) {
  if (b.col > a.col) {
    const x1 = a.x + R + 2, x2 = b.x - R - 6, dx = (x2 - x1) / 2;
    return [[x1, a.y], [x1 + dx, a.y], [x2 - dx, b.y], [x2, b.y]];
  }
  const drop = 60 + Math.abs(a.y - b.y) / 4;
  return [[a.x, a.y + R + 2], [a.x + 40, Math.max(a.y, b.y) + drop], [b.x - 40, Math.max(a.y, b.y) + drop], [b.x, b.y + R + 6]];
}
const at = (p, t) => {
  const u = 1 - t;
  const k = [u * u * u, 3 * u * u * t, 3 * u * t * t, t * t * t];
  return [0, 1].map((d) => k.reduce((acc, w, i) => acc + w * p[i][d], 0));
};

export class Topology {
  constructor(root) {
    this.root = root;
    this.graph = null;
    this.namespaces = new Set();
    this.timer = null;
    this.loadedKey = null;
    this.build();
  }

  build() {
    const sel = (name, label, options, testid) => h('label', {}, h('span', {}, label),
      h('select', { name, 'data-testid': testid }, options.map(([v, t]) => h('option', { value: v }, t))));
    this.form = h('form', { class: 'toolbar', 'data-testid': 'topology-toolbar' },
      sel('window', 'Window', WINDOWS.map((w) => [w, w === 'custom' ? 'Custom…' : 'Last ' + w]), 'window'),
      h('span', { class: 'custom', hidden: true },
        h('label', {}, h('span', {}, 'From'), h('input', { type: 'datetime-local', name: 'from', step: 1, 'data-testid': 'from' })),
        h('label', {}, h('span', {}, 'To'), h('input', { type: 'datetime-local', name: 'to', step: 1, 'data-testid': 'to' }))),
      sel('refresh', 'Refresh', REFRESH, 'refresh'),
      sel('type', 'Graph', TYPES, 'graph-type'),
      h('label', {}, h('span', {}, 'Namespace'), h('select', { name: 'ns', 'data-testid': 'namespace' }, h('option', { value: '' }, 'All'))),
      sel('labels', 'Edge labels', LABELS, 'edge-labels'),
      h('button', { type: 'button', 'data-testid': 'reload', class: 'reload' }, 'Reload'),
      h('span', { class: 'updated', 'data-testid': 'updated', 'aria-live': 'polite' }));
    this.form.addEventListener('change', () => this.commit());
    this.form.addEventListener('submit', (e) => { e.preventDefault(); this.commit(); });
    this.form.querySelector('.reload').addEventListener('click', () => this.load(true));
    this.canvas = h('div', { class: 'canvas', 'data-testid': 'graph' });
    this.panel = h('aside', { class: 'panel', 'data-testid': 'side-panel', hidden: true, 'aria-live': 'polite' });
    this.legend = legend();
    this.root.append(this.form, h('div', { class: 'split' }, h('div', { class: 'graph-col' }, this.canvas, this.legend), this.panel));
  }

  /** Form → URL (the URL is the state; hashchange renders it). */
  commit(extra = {}) {
    const f = new FormData(this.form);
    const p = { window: f.get('window'), refresh: f.get('refresh'), type: f.get('type'), ns: f.get('ns'), labels: f.get('labels') };
    if (p.window === 'custom') {
      const iso = (v) => (v ? new Date(v).toISOString() : '');
      p.from = iso(f.get('from'));
      p.to = iso(f.get('to'));
    }
    Object.assign(p, { node: this.st?.node, edge: this.st?.edge }, extra);
    location.hash = route('topology', p);
  }

  show(r) {
    this.st = settings(r.params);
    const f = this.form.elements;
    f.window.value = this.st.window;
    f.refresh.value = this.st.refresh;
    f.type.value = this.st.type;
    f.labels.value = this.st.labels;
    this.form.querySelector('.custom').hidden = this.st.window !== 'custom';
    const local = (iso) => {
      if (!iso) return '';
      const d = new Date(iso);
      return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 19);
    };
    f.from.value = local(this.st.from);
    f.to.value = local(this.st.to);
    if (this.st.ns) this.namespaces.add(this.st.ns);
    this.fillNamespaces();
    clearInterval(this.timer);
    const secs = Number(this.st.refresh);
    if (secs > 0) this.timer = setInterval(() => this.load(false), secs * 1000);
    const key = JSON.stringify([this.st.window, this.st.from, this.st.to, this.st.type, this.st.ns]);
    if (key !== this.loadedKey || !this.graph) {
      this.loadedKey = key;
      this.load(true);
    } else {
      this.draw();
    }
  }

  leave() { clearInterval(this.timer); this.timer = null; }

  redraw() { if (this.graph) this.draw(); }

  fillNamespaces() {
    const sel = this.form.elements.ns;
    const want = this.st.ns;
    const have = [...sel.options].map((o) => o.value);
    for (const ns of [...this.namespaces].sort()) {
      if (!have.includes(ns)) sel.append(h('option', { value: ns }, ns));
    }
    sel.value = want;
  }

  query() {
    const q = new URLSearchParams({ graph_type: this.st.type, inject_service_nodes: 'true' });
    if (this.st.window === 'custom') {
      if (this.st.from) q.set('from', this.st.from);
      if (this.st.to) q.set('to', this.st.to);
      if (!this.st.from) q.set('window', '5m');
    } else {
      q.set('window', this.st.window);
    }
    if (this.st.ns) q.set('namespace', this.st.ns);
    return 'api/v1/graph?' + q.toString();
  }

  async load(showLoading) {
    const url = this.query();
    if (showLoading && !this.graph) this.canvas.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
    try {
      const g = await getJSON(url);
      if (url !== this.query()) return; // settings changed while this was in flight
      this.graph = g;
      for (const n of g.nodes) if (n.namespace) this.namespaces.add(n.namespace);
      this.fillNamespaces();
      this.form.querySelector('.updated').textContent = 'updated ' + new Date().toLocaleTimeString();
      this.draw();
    } catch (e) {
      this.canvas.replaceChildren(h('p', { class: 'error', 'data-testid': 'graph-error' }, 'Could not load the graph: ' + e.message));
    }
  }

  select(kind, id) {
    this.commit({ node: kind === 'node' ? id : '', edge: kind === 'edge' ? id : '' });
  }

  draw() {
    const g = this.graph;
    const focused = document.activeElement?.dataset?.key;
    if (!g.nodes.length) {
      this.canvas.replaceChildren(h('p', { class: 'muted', 'data-testid': 'graph-empty' },
        'No traffic in this window. Widen the window or send some requests through the mesh.'));
      this.renderPanel();
      return;
    }
    const L = layout(g);
    const byId = new Map(g.nodes.map((n) => [n.id, n]));
    // Scaled down to fit the pane, never up: labels stay readable on small graphs.
    const svg = s('svg', {
      viewBox: `0 0 ${L.width} ${L.height}`, class: 'topology', preserveAspectRatio: 'xMinYMin meet',
      role: 'group', 'aria-label': 'Service graph',
    });
    // CSSOM, allowed by the CSP; below 85 % the pane scrolls instead.
    svg.style.maxWidth = L.width + 'px';
    svg.style.minWidth = Math.round(L.width * 0.85) + 'px';
    const defs = s('defs', {});
    for (const hl of ['healthy', 'degraded', 'failure', 'idle']) {
      defs.append(s('marker', { id: 'arrow-' + hl, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
        s('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrowhead ' + hl })));
    }
    svg.append(defs);
    const multiNs = new Set(g.nodes.map((n) => n.namespace)).size > 1;
    for (const b of L.boxes) {
      const a = L.pos.get(b.first), z = L.pos.get(b.last);
      svg.append(s('g', { class: 'appbox', 'data-testid': 'app-box' },
        s('rect', { x: a.x - 62, y: a.y - R - 22, width: 124, height: z.y - a.y + 2 * R + 58, rx: 10 }),
        s('text', { x: a.x - 56, y: a.y - R - 8, class: 'boxlabel' }, b.app)));
    }
    const edgesG = s('g', { class: 'edges' });
    const nodesG = s('g', { class: 'nodes' });
    for (const e of g.edges) {
      const a = L.pos.get(e.source), b = L.pos.get(e.target);
      if (!a || !b) continue;
      const p = curve(a, b);
      const d = `M${p[0]} C${p[1]} ${p[2]} ${p[3]}`;
      const cb = e.circuit_breaker || {};
      const fi = e.fault_injection || {};
      const src = byId.get(e.source), dst = byId.get(e.target);
      const label = edgeLabel(e, this.st.labels);
      const grp = s('g', {
        class: `edge ${e.health}${this.st.edge === e.id ? ' selected' : ''}`, 'data-testid': 'edge', 'data-key': 'e:' + e.id, 'data-edge-id': e.id,
        'data-source': e.source, 'data-target': e.target, 'data-health': e.health,
        'data-tripped': cb.tripped ? 'true' : 'false',
        'aria-label': `Edge ${nodeName(src)} to ${nodeName(dst)}: ${fmt.rps(e.rps)} requests per second, ${fmt.pct(e.error_rate)} errors${cb.tripped ? ', circuit breaker tripped' : ''}`,
      },
      s('title', {}, `${nodeName(src)} → ${nodeName(dst)}`),
      s('path', { d, class: 'hit' }),
      s('path', { d, class: 'line', 'marker-end': `url(#arrow-${e.health})`, 'stroke-width': (1.5 + Math.min(4, Math.log10(1 + e.rps) * 2)).toFixed(2) }));
      if (label) {
        const [mx, my] = at(p, 0.5);
        const w = label.length * 6.6 + 8;
        grp.append(s('g', { class: 'elabel', 'data-testid': 'edge-label' },
          s('rect', { x: mx - w / 2, y: my - 9, width: w, height: 16, rx: 3 }),
          s('text', { x: mx, y: my + 3, 'text-anchor': 'middle' }, label)));
      }
      if (cb.tripped) {
        const [x, y] = at(p, 0.28);
        grp.append(s('g', { class: 'breaker', 'data-testid': 'breaker-marker', transform: `translate(${x},${y})` },
          s('title', {}, `Circuit breaker tripped: ${fmt.int(cb.overflow)} overflowed, ${fmt.int(cb.uo_responses)} UO responses${cb.open ? ', open now' : ''}`),
          s('circle', { r: 10 }),
          // A broken wire: two stubs and a gap with a spark.
          s('path', { d: 'M-7,0 H-3 M3,0 H7 M-3,0 L1,-5 M1,5 L3,0', class: 'glyph' })));
      }
      if ((fi.aborted || 0) + (fi.delayed || 0) > 0) {
        const [x, y] = at(p, 0.72);
        grp.append(s('g', { class: 'fault', 'data-testid': 'fault-marker', transform: `translate(${x},${y})` },
          s('title', {}, `Injected faults: ${fmt.int(fi.aborted)} aborted, ${fmt.int(fi.delayed)} delayed`),
          s('path', { d: 'M0,-9 L9,0 L0,9 L-9,0 z' }),
          s('text', { y: 4, 'text-anchor': 'middle' }, 'F')));
      }
      activate(grp, () => this.select('edge', e.id));
      edgesG.append(grp);
    }
    for (const n of g.nodes) {
      const { x, y } = L.pos.get(n.id);
      const name = nodeName(n);
      const sub = [n.kind === 'service' ? '' : n.version, multiNs ? n.namespace : ''].filter(Boolean).join(' · ');
      const grp = s('g', {
        class: `node ${n.kind} ${n.health}${this.st.node === n.id ? ' selected' : ''}`, 'data-testid': 'node', 'data-key': 'n:' + n.id,
        'data-id': n.id, 'data-kind': n.kind, 'data-name': name, transform: `translate(${x},${y})`,
        'aria-label': `${n.kind} ${name}${n.version ? ' ' + n.version : ''}, ${n.health}`,
      }, s('title', {}, `${n.kind}: ${name}${n.version ? ' ' + n.version : ''} (${n.namespace || 'unknown namespace'})`),
      shape(n.kind),
      s('text', { y: R + 15, 'text-anchor': 'middle', class: 'name' }, name),
      sub ? s('text', { y: R + 28, 'text-anchor': 'middle', class: 'sub' }, sub) : null);
      activate(grp, () => this.select('node', n.id));
      nodesG.append(grp);
    }
    svg.append(edgesG, nodesG);
    this.canvas.replaceChildren(svg);
    if (focused) svg.querySelector(`[data-key="${CSS.escape(focused)}"]`)?.focus();
    this.renderPanel();
  }

  renderPanel() {
    const g = this.graph;
    const p = this.panel;
    const edge = this.st.edge && g?.edges.find((e) => e.id === this.st.edge);
    const node = this.st.node && g?.nodes.find((n) => n.id === this.st.node);
    if (!edge && !node) { p.hidden = true; clear(p); return; }
    p.hidden = false;
    const close = h('button', { type: 'button', class: 'close', 'aria-label': 'Close panel', 'data-testid': 'panel-close' }, '×');
    close.addEventListener('click', () => this.select('', ''));
    const byId = new Map(g.nodes.map((n) => [n.id, n]));
    p.replaceChildren(close, ...(edge ? edgePanel(edge, byId, this) : nodePanel(node, g, byId, this)));
  }
}

function shape(kind) {
  switch (kind) {
    case 'service': return s('path', { class: 'shape', d: `M0,${-R - 3} L${R + 4},${R - 2} L${-R - 4},${R - 2} z` });
    case 'app': return s('rect', { class: 'shape', x: -R - 5, y: -R + 2, width: 2 * R + 10, height: 2 * R - 4, rx: 7 });
    case 'workload': return s('circle', { class: 'shape', r: R });
    default: return s('path', { class: 'shape', d: `M0,${-R} L${R},0 L0,${R} L${-R},0 z` });
  }
}

function legend() {
  const item = (svgChild, text) => h('span', { class: 'item' },
    s('svg', { width: 28, height: 24, viewBox: '-14 -12 28 24', 'aria-hidden': 'true' }, svgChild), text);
  return h('div', { class: 'legend', 'data-testid': 'legend' },
    item(s('g', { class: 'node healthy' }, s('circle', { class: 'shape', r: 8 })), 'workload'),
    item(s('g', { class: 'node healthy' }, s('rect', { class: 'shape', x: -11, y: -7, width: 22, height: 14, rx: 4 })), 'app'),
    item(s('g', { class: 'node healthy' }, s('path', { class: 'shape', d: 'M0,-9 L10,8 L-10,8 z' })), 'service'),
    item(s('g', { class: 'node healthy' }, s('path', { class: 'shape', d: 'M0,-9 L9,0 L0,9 L-9,0 z' })), 'unknown'),
    item(s('path', { class: 'swatch healthy', d: 'M-12,0 H12' }), 'healthy'),
    item(s('path', { class: 'swatch degraded', d: 'M-12,0 H12' }), 'degraded'),
    item(s('path', { class: 'swatch failure', d: 'M-12,0 H12' }), 'failure'),
    item(s('g', { class: 'breaker', transform: 'scale(0.9)' }, s('circle', { r: 10 }), s('path', { d: 'M-7,0 H-3 M3,0 H7 M-3,0 L1,-5 M1,5 L3,0', class: 'glyph' })), 'breaker tripped'),
    item(s('g', { class: 'fault', transform: 'scale(0.9)' }, s('path', { d: 'M0,-9 L9,0 L0,9 L-9,0 z' }), s('text', { y: 4, 'text-anchor': 'middle' }, 'F')), 'injected fault'));
}

const kv = (rows, testid) => h('table', { class: 'kv', 'data-testid': testid },
  h('tbody', {}, rows.filter(Boolean).map(([k, v]) => h('tr', {}, h('th', { scope: 'row' }, k), h('td', {}, v)))));

function healthBadge(hl) { return h('span', { class: 'badge ' + hl, 'data-testid': 'health' }, hl); }

function edgePanel(e, byId, view) {
  const src = byId.get(e.source), dst = byId.get(e.target);
  const cb = e.circuit_breaker || {};
  const fi = e.fault_injection || {};
  const lat = e.latency_ms || {};
  const reps = Object.keys(e.latency_ms_by_reporter || {});
  const meanings = e.response_flags || {};
  const latRow = (q) => h('tr', {}, h('th', { scope: 'row' }, q), h('td', { class: 'num' }, fmt.ms(lat[q])),
    reps.map((r) => h('td', { class: 'num' }, fmt.ms(e.latency_ms_by_reporter[r][q]))));
  const sourceName = src.workload || src.app || src.service;
  const destName = e.destination_service || dst.service || dst.workload || dst.app;
  const win = view.st.window === 'custom' ? {} : { lookback: view.st.window === '1m' || view.st.window === '5m' ? '15m' : view.st.window };
  const sample = (status, text, testid) => h('a', {
    href: route('traces', { source: src.kind === 'service' ? '' : sourceName, destination: destName, status, ...win }),
    'data-testid': testid,
  }, text);
  const codeRows = (e.codes_by_flags || []).map((c) => {
    const flags = c.flags && c.flags !== '-' ? c.flags.split(',') : [];
    return h('tr', { 'data-testid': 'code-flag-row' },
      h('td', { class: 'num code' + (c.code >= 500 || c.code === 0 ? ' bad' : c.code >= 400 ? ' warn' : '') }, String(c.code)),
      h('td', {}, flags.length ? flags.join(',') : '–'),
      h('td', { class: 'num' }, fmt.int(c.count)),
      h('td', { class: 'meaning' }, flags.map((f) => meanings[f]?.meaning ? `${f}: ${meanings[f].meaning}` : '').filter(Boolean).join('; ')));
  });
  return [
    h('h2', { 'data-testid': 'panel-title' }, `${nodeName(src)} → ${nodeName(dst)}`),
    h('p', { class: 'muted' }, [e.protocol, e.destination_service].filter(Boolean).join(' · '), ' ', healthBadge(e.health)),
    h('h3', {}, 'Requests'),
    kv([
      ['Requests', fmt.int(e.requests)], ['Rate', fmt.rps(e.rps) + ' /s'],
      ['Errors', `${fmt.int(e.errors)} (5xx ${fmt.int(e.errors_5xx)}, 4xx ${fmt.int(e.errors_4xx)})`],
      ['Error rate', fmt.pct(e.error_rate)], ['Traffic share', fmt.pct(e.traffic_share)],
      ['Bytes sent / received', `${fmt.bytes(e.bytes_sent)} / ${fmt.bytes(e.bytes_received)}`],
    ], 'red'),
    h('h3', {}, 'Latency'),
    h('table', { class: 'grid', 'data-testid': 'latency' },
      h('thead', {}, h('tr', {}, h('th', {}, ''), h('th', {}, 'all'), reps.map((r) => h('th', {}, 'by ' + r)))),
      h('tbody', {}, ['avg', 'p50', 'p95', 'p99'].map(latRow))),
    h('h3', {}, 'Response codes × Envoy flags'),
    codeRows.length
      ? h('table', { class: 'grid', 'data-testid': 'codes-flags' },
        h('thead', {}, h('tr', {}, h('th', {}, 'code'), h('th', {}, 'flags'), h('th', {}, 'count'), h('th', {}, 'meaning'))),
        h('tbody', {}, codeRows))
      : h('p', { class: 'muted' }, 'No requests.'),
    h('h3', {}, 'Circuit breaker'),
    kv([
      ['Tripped', cb.tripped ? 'yes' : 'no'], ['Open now', cb.open ? 'yes' : 'no'],
      ['Overflow', fmt.int(cb.overflow)], ['Pending overflow', fmt.int(cb.pending_overflow)],
      ['UO responses', fmt.int(cb.uo_responses)], ['UH responses', fmt.int(cb.uh_responses)],
      ['Ejections', fmt.int(cb.ejections)], ['Ejections active (max)', fmt.int(cb.ejections_active_max)],
      cb.open_gauges?.length ? ['Open gauges', cb.open_gauges.join(', ')] : null,
      cb.clusters?.length ? ['Clusters', cb.clusters.join(', ')] : null,
    ], 'breaker-details'),
    (fi.aborted || fi.delayed) ? h('h3', {}, 'Injected faults') : null,
    (fi.aborted || fi.delayed) ? kv([['Aborted', fmt.int(fi.aborted)], ['Delayed', fmt.int(fi.delayed)]], 'fault-details') : null,
    h('h3', {}, 'Sample traces'),
    h('p', { class: 'links' }, sample('5xx', '5xx samples', 'samples-5xx'), ' · ', sample('', 'all samples', 'samples-all')),
  ];
}

function nodePanel(n, g, byId, view) {
  const ins = g.edges.filter((e) => e.target === n.id);
  const outs = g.edges.filter((e) => e.source === n.id);
  const edgeList = (es, other) => h('ul', { class: 'edgelist' }, es.map((e) => {
    const a = h('a', { href: '#' }, `${nodeName(byId.get(e[other]))}: ${fmt.rps(e.rps)} rps, ${fmt.pct(e.error_rate)} errors`);
    a.addEventListener('click', (ev) => { ev.preventDefault(); view.select('edge', e.id); });
    return h('li', {}, a);
  }));
  return [
    h('h2', { 'data-testid': 'panel-title' }, nodeName(n) + (n.version ? ' ' + n.version : '')),
    h('p', { class: 'muted' }, n.kind, ' · ', n.namespace || 'unknown namespace', ' ', healthBadge(n.health)),
    kv([
      ['Workload', n.workload || '–'], ['App', n.app || '–'], ['Version', n.version || '–'], ['Service', n.service || '–'],
      ['Requests in', fmt.int(n.requests_in)], ['Errors in', fmt.int(n.errors_in)],
      ['Error rate in', n.requests_in ? fmt.pct(n.errors_in / n.requests_in) : '–'],
      ['Requests out', fmt.int(n.requests_out)],
    ], 'node-red'),
    ins.length ? h('h3', {}, 'Called by') : null, ins.length ? edgeList(ins, 'source') : null,
    outs.length ? h('h3', {}, 'Calls') : null, outs.length ? edgeList(outs, 'target') : null,
    n.workload ? h('p', { class: 'links' }, h('a', { href: route('traces', { source: n.workload }) }, 'requests sent by this workload')) : null,
  ];
}
