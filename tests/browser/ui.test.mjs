// meshscope's UI in Debian's headless Chromium, driven by playwright-core.
//   node tests/browser/ui.test.mjs <base-url> <artifacts-dir>
// Exits non-zero with a message on the first failed check. Expects the data that
// tests/tests/integration/ui.rs ingests (a small bookinfo with a tripped breaker and traced requests).

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const [base, artifacts] = process.argv.slice(2);
if (!base || !artifacts) {
  console.error('usage: node ui.test.mjs <base-url> <artifacts-dir>');
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });

const failures = [];
function check(cond, what) {
  if (cond) console.log('ok   ' + what);
  else { console.log('FAIL ' + what); failures.push(what); }
}
// UI_TOKEN: the server asks for a token (the UI's login dialog is tried first).
const uiToken = process.env.UI_TOKEN || '';
async function api(path) {
  const r = await fetch(new URL(path, base), { headers: uiToken ? { authorization: 'Bearer ' + uiToken } : {} });
  if (!r.ok) throw new Error(`${path}: ${r.status} ${await r.text()}`);
  return r.json();
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
});
let exitCode = 1;
try {
  const context = await browser.newContext({ viewport: { width: 1500, height: 900 }, colorScheme: 'light' });
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  const dialogs = [];
  const pageErrors = [];
  const foreign = [];
  page.on('dialog', async (d) => { dialogs.push(d.message()); await d.dismiss(); });
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  // The demo endpoint answers 404 outside `meshscope demo`; the UI asks anyway.
  let signedIn = !uiToken;
  page.on('console', (m) => {
    // before signing in, the browser logs the 401s that open the login dialog
    if (!signedIn && m.text().includes('401')) return;
    if (m.type() === 'error' && !(m.location()?.url || '').includes('api/v1/demo')) pageErrors.push(`${m.text()} (${m.location()?.url})`);
  });
  page.on('request', (r) => { if (!r.url().startsWith(base)) foreign.push(r.url()); });

  // ---- Login (a server with --auth-token-file): the dialog, a wrong token, the right one
  if (uiToken) {
    await page.goto(new URL('#/topology?window=5m&type=versioned_app&refresh=0', base).href);
    const dialog = page.locator('[data-testid=login]');
    await dialog.waitFor({ state: 'visible' });
    check(await page.locator('[data-testid=node]').count() === 0, 'without a token the page shows no data, only the login dialog');
    await page.fill('[data-testid=login-token]', 'not-the-token-0123456789');
    await page.click('[data-testid=login-submit]');
    await page.waitForFunction(() => document.querySelector('[data-testid=login-error]')?.textContent.includes('not accepted'));
    check(await dialog.isVisible(), 'a wrong token opens the dialog again, saying it was not accepted');
    await page.fill('[data-testid=login-token]', uiToken);
    signedIn = true;
    await page.click('[data-testid=login-submit]');
    await page.waitForSelector('[data-testid=node]');
    check(!(await dialog.isVisible()), 'the right token closes the dialog and the graph is drawn');
    check(!page.url().includes(uiToken), 'the token is in no URL');
    // leave the document, so the checks below load the page afresh (the tab keeps the token)
    await page.goto('about:blank');
  }

  // ---- Topology
  const graph = await api('api/v1/graph?window=5m&graph_type=versioned_app&inject_service_nodes=true');
  const first = await page.goto(new URL('#/topology?window=5m&type=versioned_app&labels=rps&refresh=0', base).href);
  const csp = first.headers()['content-security-policy'] || '';
  check(csp.includes("default-src 'self'") && csp.includes("script-src 'self'") && !csp.includes('unsafe-inline'),
    `the page carries a strict Content-Security-Policy (${csp})`);
  await page.waitForSelector('[data-testid=node]');
  const names = await page.$$eval('[data-testid=node]', (ns) => ns.map((n) => n.dataset.name));
  for (const want of ['productpage', 'reviews', 'ratings', 'details']) {
    check(names.includes(want), `the graph shows ${want} (nodes: ${names.join(', ')})`);
  }
  const edgeCount = await page.locator('[data-testid=edge]').count();
  check(edgeCount === graph.edges.length && edgeCount >= 6, `every edge of the API is drawn (${edgeCount} of ${graph.edges.length})`);
  const versions = await page.$$eval('[data-testid=node][data-kind=app][data-name=reviews]', (ns) => ns.length);
  const demo = !!process.env.UI_DEMO;
  check(demo ? versions >= 2 : versions === 2, `reviews v1 and v2 are ${demo ? 'separate' : 'two'} nodes (${versions})`);
  check(await page.locator('[data-testid=app-box]').count() >= 1, 'the versions of reviews sit in one app box');

  const tripped = graph.edges.filter((e) => e.circuit_breaker.tripped);
  check(tripped.length >= 1, `the API reports a tripped edge (${tripped.length})`);
  const trippedEdge = tripped.find((e) => e.response_flags.UO);
  const markerOnTripped = await page.locator(`[data-testid=edge][data-tripped=true] [data-testid=breaker-marker]`).count();
  const markerOnOthers = await page.locator(`[data-testid=edge][data-tripped=false] [data-testid=breaker-marker]`).count();
  check(markerOnTripped === tripped.length && markerOnOthers === 0, `the broken-circuit marker is on tripped edges only (${markerOnTripped}/${markerOnOthers})`);
  const faulted = graph.edges.filter((e) => e.fault_injection.aborted + e.fault_injection.delayed > 0).length;
  check(faulted >= 1 && await page.locator('[data-testid=fault-marker]').count() === faulted, 'the injected-fault marker is on the faulted edge');
  const stable1 = await page.$$eval('[data-testid=node]', (ns) => ns.map((n) => n.dataset.id + '@' + n.getAttribute('transform')).join('|'));

  // Click the tripped edge: codes × flags with each flag's meaning.
  const edge = page.locator('[data-testid=edge][data-tripped=true]').filter({ has: page.locator('[data-testid=breaker-marker]') })
    .and(page.locator(`[data-source="${trippedEdge.source}"][data-target="${trippedEdge.target}"]`));
  await edge.locator('[data-testid=breaker-marker]').click();
  await page.waitForSelector('[data-testid=codes-flags]');
  const table = await page.locator('[data-testid=codes-flags]').innerText();
  const uo = trippedEdge.response_flags.UO;
  check(/503\s+UO\s+/.test(table) && table.includes(String(trippedEdge.codes_by_flags.find((c) => c.flags === 'UO')?.count)),
    'the edge panel lists 503 × UO with its count');
  check(table.includes(uo.meaning), `the UO flag's meaning is shown ("${uo.meaning}")`);
  const breaker = await page.locator('[data-testid=breaker-details]').innerText();
  check(/Tripped\s+yes/.test(breaker) && breaker.includes(`UO responses\t${uo.count}`), 'the breaker details show tripped and the UO count');
  check(await page.locator('[data-testid=samples-5xx]').count() === 1, 'the edge links to its 5xx sample traces');
  const titled = await page.locator('[data-testid=panel-title]').innerText();

  // Deep link: the URL holds the view.
  await page.reload();
  await page.waitForSelector('[data-testid=codes-flags]');
  check(await page.locator('[data-testid=panel-title]').innerText() === titled, 'reloading the URL restores the selected edge');
  const stable2 = await page.$$eval('[data-testid=node]', (ns) => ns.map((n) => n.dataset.id + '@' + n.getAttribute('transform')).join('|'));
  check(stable1 === stable2, 'the layout is the same after a refresh');
  await page.screenshot({ path: join(artifacts, 'topology.png'), fullPage: true });

  // Keyboard: a node reached by focus and Enter opens its panel.
  await page.focus('[data-testid=node][data-name=productpage]');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelector('[data-testid=panel-title]')?.textContent.startsWith('productpage'));
  check(true, 'a node opens from the keyboard');

  // Switches: edge labels, graph type, namespace (each one a new URL, drawn from the API).
  await page.selectOption('[data-testid=edge-labels]', 'error');
  await page.waitForFunction(() => [...document.querySelectorAll('[data-testid=edge-label] text')].every((t) => t.textContent.endsWith('%')));
  check(page.url().includes('labels=error'), 'edge labels switch to error % (and the URL says so)');
  const wl = await api('api/v1/graph?window=5m&graph_type=workload&inject_service_nodes=true');
  await page.selectOption('[data-testid=graph-type]', 'workload');
  await page.waitForFunction(() => document.querySelectorAll('[data-testid=node][data-kind=app]').length === 0);
  const wlNodes = await page.locator('[data-testid=node]').count();
  check(wlNodes === wl.nodes.length && await page.locator('[data-testid=node][data-kind=workload]').count() >= 5,
    `the workload graph shows workloads (${wlNodes} nodes)`);
  const ns = await api('api/v1/graph?window=5m&graph_type=workload&inject_service_nodes=true&namespace=istio-system');
  await page.selectOption('[data-testid=namespace]', 'istio-system');
  await page.waitForFunction((n) => document.querySelectorAll('[data-testid=edge]').length === n, ns.edges.length);
  check(ns.edges.length < wl.edges.length, `the namespace filter narrows the graph (${ns.edges.length} of ${wl.edges.length} edges)`);
  await page.selectOption('[data-testid=namespace]', '');
  await page.selectOption('[data-testid=graph-type]', 'versioned_app');
  await page.waitForSelector('[data-testid=node][data-kind=app]');

  // Dark theme.
  await page.click('[data-testid=theme-toggle]');
  const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  check(bg !== 'rgb(255, 255, 255)', `the dark theme applies (${bg})`);
  await page.screenshot({ path: join(artifacts, 'topology-dark.png'), fullPage: true });
  await page.click('[data-testid=theme-toggle]');

  // ---- The search box: an x-request-id from the API lands on the waterfall.
  // (On `meshscope demo` the Rust side picks the request: UI_REQUEST_ID.)
  let rid = process.env.UI_REQUEST_ID;
  if (!rid) {
    const recent = await api('api/v1/traces?service=productpage.default&limit=50');
    const errTrace = recent.traces.find((t) => t.error_count > 0 && t.request_ids.length);
    check(!!errTrace, 'the API has a traced request with errors');
    rid = errTrace.request_ids[0];
  }
  const req = await api('api/v1/requests/' + encodeURIComponent(rid));
  await page.fill('[data-testid=find-input]', rid);
  await page.press('[data-testid=find-input]', 'Enter');
  await page.waitForSelector('[data-testid=waterfall]');
  check(page.url().includes('#/request/'), 'the request id opens the request view');
  const spanRows = await page.locator('[data-testid=span-row]').count();
  check(spanRows === req.traces[0].spans.length, `the waterfall has one row per span (${spanRows})`);
  const logRows = await page.locator('[data-testid=access-log-row]').count();
  check(logRows === req.access_log.length && logRows >= 4, `every proxy's access-log line is listed (${logRows} of ${req.access_log.length})`);
  const proxies = await page.$$eval('[data-testid=access-log-row] td:nth-child(2)', (tds) => [...new Set(tds.map((t) => t.textContent))]);
  check(proxies.length >= 3, `access-log lines from several proxies (${proxies.join(', ')})`);
  const errorRows = await page.locator('[data-testid=span-row].error').count();
  check(errorRows === req.traces[0].spans.filter((s) => s.error).length && errorRows >= 1, `error spans are highlighted (${errorRows})`);
  check(await page.locator('[data-testid=critical-segment]').count() >= 1, 'the critical path is drawn');
  const flagText = await page.$$eval('[data-testid=span-row].error .after', (ts) => ts.map((t) => t.textContent));
  check(flagText.some((t) => /\b(FI|UO|UH|DI)\b/.test(t)), `Envoy flags are shown on the bars (${flagText.join(' | ')})`);

  // The hostile attribute is text.
  const evil = req.traces[0].spans.find((s) => s.attributes['user.comment']);
  await page.click(`[data-testid=span-row][data-span-id="${evil.span_id}"]`);
  await page.waitForSelector('[data-testid=span-attributes]');
  const attrs = await page.locator('[data-testid=span-attributes]').innerText();
  check(attrs.includes('<img src=x onerror=alert(1)>'), 'the <img onerror> attribute is shown as literal text');
  await page.waitForTimeout(300);
  check(await page.locator('img').count() === 0, 'no img element was created');
  check(dialogs.length === 0, `no dialog opened (${dialogs.join(', ')})`);
  await page.screenshot({ path: join(artifacts, 'waterfall.png'), fullPage: true });

  // A trace id in the box opens the trace.
  await page.fill('[data-testid=find-input]', req.traces[0].trace_id);
  await page.press('[data-testid=find-input]', 'Enter');
  await page.waitForFunction((id) => location.hash.startsWith('#/trace/' + id), req.traces[0].trace_id);
  await page.waitForSelector('[data-testid=trace-id]');
  check(await page.locator('[data-testid=trace-id]').innerText() === req.traces[0].trace_id, 'a trace id opens its waterfall');

  // ---- Trace search: scatter and list (the page asks for the 20 most recent).
  const found = await api('api/v1/traces?service=productpage.default&limit=20');
  await page.goto(new URL('#/traces?service=productpage.default&lookback=1h', base).href);
  await page.waitForSelector('[data-testid=result-row]');
  const results = await page.locator('[data-testid=result-row]').count();
  check(results === found.traces.length, `the search lists every trace (${results})`);
  check(await page.locator('[data-testid=scatter-point]').count() === results, 'one scatter point per trace');
  await page.screenshot({ path: join(artifacts, 'search.png'), fullPage: true });

  // The form: errors only, one service.
  const errs = await api('api/v1/traces?service=reviews.default&error=true&limit=20');
  await page.fill('[data-testid=search-service]', 'reviews.default');
  await page.check('[data-testid=search-error]');
  await page.click('[data-testid=search-submit]');
  await page.waitForFunction(() => location.hash.includes('error=true'));
  await page.waitForFunction((n) => document.querySelectorAll('[data-testid=result-row]').length === n, errs.traces.length);
  // (the demo keeps sending traffic, so there both lists may be full)
  check(errs.traces.length >= 1 && (demo || errs.traces.length < found.traces.length), `the search form filters (${errs.traces.length} error traces)`);

  // Edge samples from the topology link.
  await page.goto(new URL(`#/topology?window=5m&type=versioned_app&refresh=0&edge=${encodeURIComponent(trippedEdge.id)}`, base).href);
  await page.click('[data-testid=samples-5xx]');
  await page.waitForSelector('[data-testid=edge-search]:not([hidden])');
  await page.waitForSelector('[data-testid=result-row], [data-testid=no-results], [data-testid=search-error-text]');
  check(await page.locator('[data-testid=search-error-text]').count() === 0, 'the edge sample search is accepted by the API');

  check(pageErrors.length === 0, `no script errors or CSP violations (${pageErrors.join(' | ')})`);
  check(foreign.length === 0, `no request leaves the server (${foreign.join(', ')})`);
  exitCode = failures.length ? 1 : 0;
} catch (e) {
  console.log('FAIL ' + (e.stack || e));
} finally {
  await browser.close();
}
if (failures.length) console.log(`${failures.length} check(s) failed: ${failures.join('; ')}`);
process.exit(exitCode);
