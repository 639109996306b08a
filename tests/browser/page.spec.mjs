// The Global services page in a real headless browser.
//
//   node tests/browser/page.spec.mjs URL CLUSTER1_FOLDER [VIP:PORT DEAD_VIP:PORT]
//
// URL: the page of a running two-cluster mesh (cluster1, cluster2) whose
// clusters both export `in-ambient.httpbin.mesh.internal`; CLUSTER1_FOLDER:
// cluster1's watched folder, holding `helloworld.yaml` (a Service not yet
// global; the script labels it global, then misspells its scope and adds an
// unreadable `broken.yaml` to see the Problems view explain why). Started by
// crates/meshpeer/tests/web.rs with MESHPEER_BROWSER_TEST=1, which sets all
// of that up. VIP:PORT: cluster1's VIP of `echo.shop.mesh.internal`, a
// service only cluster2 has (its backend answers a line, then echoes): the
// script connects to it, so cluster1's proxy sends the connections to
// cluster2 through the gateways, and the Traffic view must draw them.
// DEAD_VIP:PORT: cluster1's VIP of `dead.shop.mesh.internal`, only in
// cluster2, whose pod refuses connections: a connection there fails, and
// the view must show it as an error.
//
// Drives Debian's chromium (/usr/bin/chromium, or $CHROMIUM) with
// playwright-core; never downloads a browser. Exits 0 when every check
// passes, else 1 with what failed. MESHPEER_BROWSER_SCREENSHOTS=DIR keeps
// screenshots of the three views there.

import { chromium } from 'playwright-core';
import { existsSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect } from 'node:net';

const [url, folder, vip, deadVip] = process.argv.slice(2);
const EXECUTABLE = process.env.CHROMIUM || '/usr/bin/chromium';
// Set to a folder to keep screenshots of the services, peers and problems views.
const SHOTS = process.env.MESHPEER_BROWSER_SCREENSHOTS;
const WAIT_MS = 30_000;
const TOTAL_MS = 150_000;

const GLOBAL = 'in-ambient.httpbin.mesh.internal';
const RELABELLED = 'helloworld.sample.mesh.internal';
const MISSPELT = 'globl';
const G5 = 'tr[data-testid="problem-row"][data-rule="G5"][data-object="service sample/helloworld"]';
const BADGE = '#problems-badge';
const ECHO = 'echo.shop.mesh.internal';
const DEAD = 'dead.shop.mesh.internal';
const FAILED = 'g[data-testid="traffic-edge"][data-source="cluster1"][data-destination="none"]';
const EDGE = 'g[data-testid="traffic-edge"][data-source="cluster1"][data-destination="cluster2"]';
// A manifest that cannot be read: an F1 error.
const BROKEN = 'broken.yaml';
const F1 = `tr[data-testid="problem-row"][data-rule="F1"][data-severity="error"]`;

function fail(message) {
  console.error(`browser test FAILED: ${message}`);
  process.exit(1);
}

if (!url || !folder) fail('usage: node page.spec.mjs URL CLUSTER1_FOLDER');
if (!existsSync(EXECUTABLE)) {
  fail(`no browser at ${EXECUTABLE} (apt-get install chromium, or set CHROMIUM)`);
}
const origin = new URL(url).origin;

const watchdog = setTimeout(() => fail(`not finished within ${TOTAL_MS / 1000} s`), TOTAL_MS);

let step = 'starting';
const log = (s) => {
  step = s;
  console.log(`- ${s}`);
};

// What the page did that it should not: errors, requests elsewhere.
const problems = [];

async function open(browser, path) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console error on ${path}: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`script error on ${path}: ${e.message}`));
  page.on('request', (r) => {
    const u = r.url();
    if (!u.startsWith(`${origin}/`) && !u.startsWith('data:')) {
      problems.push(`request to another origin: ${u}`);
    }
  });
  page.setDefaultTimeout(WAIT_MS);
  const resp = await page.goto(`${origin}${path}`);
  if (!resp || resp.status() !== 200) fail(`GET ${path}: HTTP ${resp && resp.status()}`);
  return page;
}

const row = (host) => `tr[data-testid="service-row"][data-hostname="${host}"]`;

// The text of a table row's cells, by their data-col.
async function cellsOf(page, selector) {
  return page.$eval(selector, (tr) => {
    const out = {};
    for (const c of tr.querySelectorAll('[data-col]')) out[c.dataset.col] = c.textContent.trim();
    return out;
  });
}

const cells = (page, host) => cellsOf(page, row(host));

function expect(what, got, want) {
  if (got !== want) fail(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
}

// Rewrites the Service's labels as `kubectl label` would, replacing the file
// in one rename as editors do; the controller watches the folder.
function relabel(file) {
  const text = readFileSync(file, 'utf8');
  if (text.includes('solo.io/service-scope')) fail(`${file} is global already`);
  const next = text.replace('  labels: {', '  labels: {solo.io/service-scope: "global", ');
  if (next === text) fail(`${file} has no "labels: {" line to change`);
  const tmp = join(folder, '.helloworld.yaml.tmp');
  writeFileSync(tmp, next);
  renameSync(tmp, file);
}

// Replaces helloworld's scope label value `from` by `to`, the same way.
function rescope(file, from, to) {
  const text = readFileSync(file, 'utf8');
  const next = text.replace(`solo.io/service-scope: "${from}"`, `solo.io/service-scope: "${to}"`);
  if (next === text) fail(`${file} has no solo.io/service-scope: "${from}" to change`);
  const tmp = join(folder, '.helloworld.yaml.tmp');
  writeFileSync(tmp, next);
  renameSync(tmp, file);
}

// One connection to the VIP: the backend's first line, then closed.
function ask(target) {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port });
    let got = '';
    socket.setTimeout(10_000, () => socket.destroy(new Error(`${target}: no answer within 10 s`)));
    socket.on('data', (d) => {
      got += d.toString();
      if (got.includes('\n')) socket.end();
    });
    socket.on('error', reject);
    socket.on('close', () => (got.includes('\n') ? resolve(got.trim()) : reject(new Error(`${target} closed: ${JSON.stringify(got)}`))));
  });
}

async function askTimes(n) {
  for (let i = 0; i < n; i += 1) {
    const who = await ask(vip);
    if (who !== 'cluster2') fail(`${ECHO} from cluster1 answered by ${JSON.stringify(who)}, not cluster2`);
  }
}

// The Traffic view: connections from cluster1's clients to ECHO cross to
// cluster2; an edge cluster1 -> cluster2 appears with their count, live,
// with a rate while they keep coming, and follows the service selector.
async function trafficView(page) {
  log('the Traffic view of cluster1: the clusters as nodes');
  await page.selectOption('#cluster-select', 'cluster1');
  await page.waitForSelector('#cluster-info:has-text("cluster cluster1")');
  await page.click('#tab-traffic');
  await page.waitForSelector('#panel-traffic:not([hidden])');
  if (!page.url().includes('tab=traffic')) fail(`the tab is not in the address: ${page.url()}`);
  await page.waitForSelector('g[data-testid="traffic-node"][data-cluster="cluster1"]');
  await page.waitForSelector('g[data-testid="traffic-node"][data-cluster="cluster2"]');
  if (await page.$(EDGE)) fail('an edge cluster1 -> cluster2 before any request crossed');

  log(`5 connections from cluster1 to ${ECHO} (only in cluster2)`);
  await askTimes(5);
  await page.waitForSelector(`${EDGE}[data-connections="5"][data-failures="0"]`);
  const label = (await page.textContent(`${EDGE} [data-testid="traffic-edge-label"]`)).trim();
  if (!/^5 conn · [\d.]+\/s · 0% err$/.test(label)) fail(`edge label ${JSON.stringify(label)}`);
  const row = `tr[data-testid="traffic-row"][data-reporter="proxy"][data-source="cluster1"][data-destination="cluster2"][data-service="${ECHO}"]`;
  await page.waitForSelector(`${row}[data-connections="5"]`);
  // SVG drawn in the page itself, nothing fetched to draw it.
  const inline = await page.$eval('#traffic-graph', (g) => g.namespaceURI === 'http://www.w3.org/2000/svg' && g.querySelectorAll('path').length > 0);
  if (!inline) fail('the graph is not an inline SVG with paths');

  log('live: requests that keep coming show a rate, without a reload');
  let sending = true;
  const background = (async () => {
    while (sending) await askTimes(1);
  })();
  try {
    await page.waitForFunction((sel) => {
      const g = document.querySelector(sel);
      return g && Number(g.dataset.rate) > 0 && Number(g.dataset.connections) > 5 && g.dataset.kind === 'ok';
    }, EDGE);
  } finally {
    sending = false;
    await background;
  }
  if (!(await page.evaluate(() => window.__sameDocument === true))) fail('the page reloaded to show the traffic');

  if (deadVip) {
    log(`a connection from cluster1 to ${DEAD}, whose only pod (in cluster2) refuses it`);
    const closed = await new Promise((resolve) => {
      const [host, port] = [deadVip.slice(0, deadVip.lastIndexOf(':')), Number(deadVip.slice(deadVip.lastIndexOf(':') + 1))];
      const socket = connect({ host, port });
      let got = '';
      socket.on('data', (d) => {
        got += d.toString();
      });
      socket.on('error', () => {});
      socket.on('close', () => resolve(got));
    });
    if (closed !== '') fail(`${DEAD} answered ${JSON.stringify(closed)}`);
    log('a red edge to "no endpoint", 100% errors, the failure in the table');
    await page.waitForSelector(`${FAILED}[data-connections="1"][data-failures="1"][data-kind="bad"]`);
    const failedLabel = (await page.textContent(`${FAILED} [data-testid="traffic-edge-label"]`)).trim();
    if (!/^1 conn · [\d.]+\/s · 100% err$/.test(failedLabel)) fail(`failure edge label ${JSON.stringify(failedLabel)}`);
    expect('failure node', (await page.textContent('g[data-testid="traffic-node"][data-cluster="none"] text')).trim(), 'no endpoint');
    await page.waitForSelector(`tr[data-testid="traffic-row"][data-destination="none"][data-service="${DEAD}"][data-failures="1"]`);
    // The echo edge stays green: errors are per edge.
    const kind = await page.getAttribute(EDGE, 'data-failures');
    expect('failures of the echo edge', kind, '0');
  }

  if (SHOTS) await page.screenshot({ path: join(SHOTS, 'traffic.png'), fullPage: true });

  log('per service: the selector keeps only that service\'s flows');
  await page.selectOption('#traffic-service', ECHO);
  await page.waitForSelector(EDGE);
  if (deadVip) await page.waitForSelector(FAILED, { state: 'detached' });
  await page.selectOption('#traffic-service', GLOBAL);
  await page.waitForSelector(EDGE, { state: 'detached' });
  await page.waitForSelector('#traffic-empty:not([hidden])');
  await page.selectOption('#traffic-service', '');
  await page.waitForSelector(EDGE);
  expect('header cells without scope', await page.$$eval('th:not([scope])', (ths) => ths.length), 0);
}

async function main() {
  log(`launching ${EXECUTABLE} (headless)`);
  const browser = await chromium.launch({
    executablePath: EXECUTABLE,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  try {
    log(`opening ${url}`);
    const page = await open(browser, '/');
    // Before counting navigations: switching tabs rewrites the address (#tab=...).
    log('no problem yet: the Problems badge is hidden, the view says so');
    await page.waitForSelector(row(GLOBAL));
    await page.waitForSelector(`${BADGE}[data-count="0"]`, { state: 'attached' });
    if (await page.isVisible(BADGE)) fail('the Problems badge shows with no problem');
    expect('problems tab name', await page.getAttribute('#tab-problems', 'aria-label'), 'Problems');
    await page.click('#tab-problems');
    await page.waitForSelector('#panel-problems:not([hidden])');
    await page.waitForSelector('#problems-empty:not([hidden])');
    expect('empty state', (await page.textContent('#problems-empty')).trim(), "No problems in this cluster's input");
    await page.click('#tab-services');
    await page.waitForSelector('#panel-services:not([hidden])');
    await page.evaluate(() => {
      window.__sameDocument = true;
    });
    let navigations = 0;
    page.on('framenavigated', (f) => {
      if (f === page.mainFrame()) navigations += 1;
    });

    log(`waiting for ${GLOBAL} from cluster1 and cluster2`);
    await page.waitForSelector(`${row(GLOBAL)}[data-clusters="cluster1,cluster2"]`);
    const c = await cells(page, GLOBAL);
    expect('scope', c.scope, 'global');
    expect('segment', c.segment, 'default');
    expect('distribution', c.distribution, 'PreferNetwork');
    expect('clusters', c.clusters, 'cluster1, cluster2');
    if (!/^\d+\.\d+\.\d+\.\d+$/.test(c.vip)) fail(`VIP ${JSON.stringify(c.vip)} is not an address`);
    if (!c.ports.includes('8000')) fail(`ports ${JSON.stringify(c.ports)} lack 8000`);
    expect('endpoints', c.endpoints, 'cluster1 1/1cluster2 1/1');
    if (await page.$(row(RELABELLED))) fail(`${RELABELLED} is listed before it is global`);

    log('the indicator says when, which version, and that it is live (SSE)');
    const updated = page.locator('#updated');
    await page.waitForSelector('#updated[data-mode="live"]');
    const text = await updated.textContent();
    if (!/updated \d\d:\d\d:\d\d · version \d+ · live/.test(text)) fail(`indicator says ${JSON.stringify(text)}`);
    if ((await updated.getAttribute('aria-live')) !== 'polite') fail('the indicator is not aria-live');
    const before = Number(await updated.getAttribute('data-version'));

    log('expanding the endpoint list');
    await page.click(`${row(GLOBAL)} [data-testid="toggle-endpoints"]`);
    const details = `tr[data-testid="service-details"][data-hostname="${GLOBAL}"]`;
    await page.waitForSelector(details);
    const tables = await page.$$eval(`${details} [data-testid="endpoint-table"]`, (ts) =>
      ts.map((t) => `${t.dataset.cluster}:${t.querySelectorAll('[data-testid="endpoint-row"]').length}`));
    expect('endpoint tables', tables.join(' '), 'cluster1:1 cluster2:1');
    expect('aria-expanded', await page.getAttribute(`${row(GLOBAL)} [data-testid="toggle-endpoints"]`, 'aria-expanded'), 'true');
    // cluster1's HTTPRoute on the service (L7): its row, its conditions,
    // and the port marked as routed.
    const routeRow = `${details} [data-testid="route-table"] tr[data-testid="route-row"][data-route="httpbin/in-ambient"]`;
    await page.waitForSelector(routeRow);
    const routeCells = await page.$$eval(`${routeRow} td`, (tds) => tds.map((td) => td.textContent));
    expect('route row', routeCells.join(' | '), '8000 | 2 | Accepted True (Accepted)ResolvedRefs True (ResolvedRefs)');
    const ports = await page.textContent(`${row(GLOBAL)} [data-col="ports"]`);
    expect('routed port', ports, '8000/HTTP (L7 routes)');

    log(`labelling helloworld global in ${folder}`);
    relabel(join(folder, 'helloworld.yaml'));
    log(`waiting for ${RELABELLED} to appear without a reload`);
    await page.waitForSelector(`${row(RELABELLED)}[data-clusters="cluster1"]`);
    if (navigations !== 0 || !(await page.evaluate(() => window.__sameDocument === true))) {
      fail('the page reloaded to show the change');
    }
    const after = Number(await updated.getAttribute('data-version'));
    if (!(after > before)) fail(`version did not move: ${before} -> ${after}`);
    if (!(await page.$(details))) fail('the expanded endpoint list closed on refresh');
    if (SHOTS) await page.screenshot({ path: join(SHOTS, 'services.png'), fullPage: true });

    log('the Peers view shows cluster2 synced, with its conditions');
    await page.click('#tab-peers');
    await page.waitForSelector('#panel-peers:not([hidden])');
    const peer = 'tr[data-testid="peer-row"][data-peer="cluster2"]';
    await page.waitForSelector(`${peer}[data-state="Synced"]`);
    for (const type of ['gloo.solo.io/PeerConnected', 'gloo.solo.io/PeeringSucceeded', 'gloo.solo.io/PeerDataPlaneProgrammed']) {
      await page.waitForSelector(`${peer} li[data-type="${type}"][data-status="True"]`);
    }
    const since = await page.textContent(`${peer} [data-col="connected-since"]`);
    if (!/\d\d:\d\d:\d\d/.test(since)) fail(`connected since: ${JSON.stringify(since)}`);
    if (!page.url().includes('tab=peers')) fail(`the tab is not in the address: ${page.url()}`);
    if (SHOTS) await page.screenshot({ path: join(SHOTS, 'peers.png'), fullPage: true });

    log('cluster2 through the selector');
    await page.click('#tab-services');
    await page.selectOption('#cluster-select', 'cluster2');
    await page.waitForSelector('#cluster-info:has-text("cluster cluster2")');
    await page.waitForSelector(`${row(GLOBAL)}[data-clusters="cluster1,cluster2"]`);
    await page.waitForSelector(`${row(RELABELLED)}[data-clusters="cluster1"]`);

    log('accessible markup: header cells scoped, panels labelled');
    const unscoped = await page.$$eval('th:not([scope])', (ths) => ths.length);
    expect('header cells without scope', unscoped, 0);
    for (const panel of ['#panel-services', '#panel-peers', '#panel-problems']) {
      if (!(await page.getAttribute(panel, 'aria-labelledby'))) fail(`${panel} has no label`);
    }

    log('the polling fallback (?live=poll) shows the same');
    const polled = await open(browser, '/?live=poll#cluster=cluster1');
    await polled.waitForSelector(`${row(RELABELLED)}[data-clusters="cluster1"]`);
    await polled.waitForSelector('#updated[data-mode="polling"]');

    log(`misspelling helloworld's scope (${MISSPELT}) in ${folder}`);
    await page.selectOption('#cluster-select', 'cluster1');
    await page.waitForSelector('#cluster-info:has-text("cluster cluster1")');
    await page.waitForSelector(`${row(RELABELLED)}[data-clusters="cluster1"]`);
    const file = join(folder, 'helloworld.yaml');
    rescope(file, 'global', MISSPELT);
    log('the Problems badge appears, amber, without a reload (live and polling)');
    await page.waitForSelector(`${BADGE}[data-severity="warning"]:not([hidden])`);
    await polled.waitForSelector(`${BADGE}[data-severity="warning"]:not([hidden])`);
    expect('badge', (await page.textContent(BADGE)).trim(), '1');
    if (!(await page.getAttribute(BADGE, 'class')).split(' ').includes('warn')) fail('the badge is not amber');
    expect('problems tab name', await page.getAttribute('#tab-problems', 'aria-label'), 'Problems: 1 warning');
    await page.waitForSelector(row(RELABELLED), { state: 'detached' });
    await page.waitForSelector('#cluster-info:has-text("1 problem")');

    log('the Problems view names the rule, the object and the field (keyboard: End)');
    await page.focus('#tab-services');
    await page.keyboard.press('End');
    await page.waitForSelector('#tab-problems[aria-selected="true"]');
    await page.waitForSelector('#panel-problems:not([hidden])');
    if (!(await page.evaluate(() => document.activeElement && document.activeElement.id === 'tab-problems'))) {
      fail('the Problems tab is not focused after End');
    }
    if (!page.url().includes('tab=problems')) fail(`the tab is not in the address: ${page.url()}`);
    await page.waitForSelector(G5);
    const p = await cellsOf(page, G5);
    expect('severity', p.severity, 'warning');
    expect('rule', p.rule, 'G5');
    expect('object', p.object, 'service sample/helloworld');
    expect('field', p.field, 'metadata.labels[solo.io/service-scope]');
    if (!p.message.includes(`"${MISSPELT}"`) || !p.message.includes('not exported')) {
      fail(`message ${JSON.stringify(p.message)} does not say why`);
    }
    if (!(await page.isHidden('#problems-empty'))) fail('the empty state shows with a problem listed');
    const order = await page.$$eval('tr[data-testid="problem-row"]', (trs) => trs.map((t) => t.dataset.severity));
    const rank = { error: 0, warning: 1, info: 2 };
    for (let i = 1; i < order.length; i += 1) {
      if (rank[order[i - 1]] > rank[order[i]]) fail(`problems not sorted errors first: ${order.join(', ')}`);
    }
    expect('header cells without scope', await page.$$eval('th:not([scope])', (ths) => ths.length), 0);
    // Tabs rewrite the address by now: only a new document counts.
    if (!(await page.evaluate(() => window.__sameDocument === true))) {
      fail('the page reloaded to show the problem');
    }

    log(`an unreadable ${BROKEN}: the badge turns red, the error is listed first`);
    const tmp = join(folder, `.${BROKEN}.tmp`);
    writeFileSync(tmp, 'apiVersion: v1\nkind: Service\nmetadata: {name: [broken\n');
    renameSync(tmp, join(folder, BROKEN));
    await page.waitForSelector(F1);
    await page.waitForSelector(`${BADGE}[data-severity="error"]:not([hidden])`);
    if (!(await page.getAttribute(BADGE, 'class')).split(' ').includes('bad')) fail('the badge is not red');
    // The file is reported as a whole and per document: count the rows.
    const errors = await page.$$eval('tr[data-testid="problem-row"][data-severity="error"]', (trs) => trs.length);
    expect('badge', (await page.textContent(BADGE)).trim(), String(errors + 1));
    expect('problems tab name', await page.getAttribute('#tab-problems', 'aria-label'),
      `Problems: ${errors} error${errors === 1 ? '' : 's'}, 1 warning`);
    const first = await page.$eval('tr[data-testid="problem-row"]', (t) => `${t.dataset.severity} ${t.dataset.rule}`);
    expect('first problem', first, 'error F1');
    if (!(await page.$(G5))) fail('the G5 row went with the F1 error');
    if (SHOTS) await page.screenshot({ path: join(SHOTS, 'problems.png'), fullPage: true });

    log('fixed: the problems go, helloworld is global again');
    unlinkSync(join(folder, BROKEN));
    await page.waitForSelector(F1, { state: 'detached' });
    await page.waitForSelector(`${BADGE}[data-severity="warning"][data-count="1"]:not([hidden])`);
    rescope(file, MISSPELT, 'global');
    await page.waitForSelector(G5, { state: 'detached' });
    await page.waitForSelector(`${BADGE}[data-count="0"]`, { state: 'attached' });
    if (await page.isVisible(BADGE)) fail('the Problems badge stays after the fix');
    await page.waitForSelector('#problems-empty:not([hidden])');
    await page.waitForSelector(`${row(RELABELLED)}[data-clusters="cluster1"]`, { state: 'attached' });
    await polled.waitForSelector(`${BADGE}[data-count="0"]`, { state: 'attached' });
    if (!(await page.evaluate(() => window.__sameDocument === true))) {
      fail('the page reloaded to show the fix');
    }

    if (vip) await trafficView(page);

    if (problems.length) fail(problems.join('\n  '));
  } finally {
    await browser.close();
  }
}

main()
  .then(() => {
    clearTimeout(watchdog);
    console.log('browser test passed');
    process.exit(0);
  })
  .catch((e) => fail(`${step}: ${e && e.stack ? e.stack : e}`));
