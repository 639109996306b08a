// The Global services page in a real headless browser.
//
//   node tests/browser/page.spec.mjs URL CLUSTER1_FOLDER
//
// URL: the page of a running two-cluster mesh (cluster1, cluster2) whose
// clusters both export `in-ambient.httpbin.mesh.internal`; CLUSTER1_FOLDER:
// cluster1's watched folder, holding `helloworld.yaml` (a Service not yet
// global). Started by crates/meshpeer/tests/web.rs with
// MESHPEER_BROWSER_TEST=1, which sets all of that up.
//
// Drives Debian's chromium (/usr/bin/chromium, or $CHROMIUM) with
// playwright-core; never downloads a browser. Exits 0 when every check
// passes, else 1 with what failed. MESHPEER_BROWSER_SCREENSHOTS=DIR keeps
// screenshots of both views there.

import { chromium } from 'playwright-core';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const [url, folder] = process.argv.slice(2);
const EXECUTABLE = process.env.CHROMIUM || '/usr/bin/chromium';
// Set to a folder to keep screenshots of the services and peers views.
const SHOTS = process.env.MESHPEER_BROWSER_SCREENSHOTS;
const WAIT_MS = 30_000;
const TOTAL_MS = 150_000;

const GLOBAL = 'in-ambient.httpbin.mesh.internal';
const RELABELLED = 'helloworld.sample.mesh.internal';

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

async function cells(page, host) {
  return page.$eval(row(host), (tr) => {
    const out = {};
    for (const c of tr.querySelectorAll('[data-col]')) out[c.dataset.col] = c.textContent.trim();
    return out;
  });
}

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
    for (const panel of ['#panel-services', '#panel-peers']) {
      if (!(await page.getAttribute(panel, 'aria-labelledby'))) fail(`${panel} has no label`);
    }

    log('the polling fallback (?live=poll) shows the same');
    const polled = await open(browser, '/?live=poll#cluster=cluster1');
    await polled.waitForSelector(`${row(RELABELLED)}[data-clusters="cluster1"]`);
    await polled.waitForSelector('#updated[data-mode="polling"]');

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
