// The "Global services" page: reads the JSON API of the server that sent it
// (see /assets/API.md), redraws on every view change announced on
// /api/v1/events, and polls every 2 s when the event stream is unavailable.
// The Traffic view draws the reported flows (/api/v1/traffic) as an inline
// SVG graph, polled every 2 s while it is shown.
// No framework and no build step: plain DOM, text set with textContent only.
'use strict';

(() => {
  const POLL_MS = 2000;
  // How often "connected 5m ago" is redrawn between changes.
  const AGES_MS = 10000;
  const RECONNECT_MS = 5000;
  const TABS = ['services', 'peers', 'traffic', 'problems'];
  // Error rates from which an edge is amber, then red.
  const ERROR_WARN = 0.01;
  const ERROR_BAD = 0.1;
  // Errors first: the order of the table and of /api/v1/diagnostics.
  const SEVERITY_RANK = { error: 0, warning: 1, info: 2 };
  const SEVERITY_BADGE = { error: 'bad', warning: 'warn', info: 'info' };

  const state = {
    clusters: [],
    cluster: null,
    tab: 'services',
    version: 0,
    services: null,
    peers: null,
    diagnostics: null,
    traffic: null,
    trafficService: '',
    trafficAt: null,
    trafficInFlight: false,
    expanded: new Set(),
    filter: '',
    mode: 'connecting',
    events: null,
    pollTimer: null,
    inFlight: false,
    again: false,
    updatedAt: null,
  };

  const $ = (id) => document.getElementById(id);

  // el('td', {class: 'mono', 'data-col': 'vip'}, 'text', childNode, ...)
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function badge(text, kind, attrs) {
    return el('span', Object.assign({ class: kind ? `badge ${kind}` : 'badge' }, attrs || {}), text);
  }

  async function getJSON(url) {
    const resp = await fetch(url, { cache: 'no-store', headers: { accept: 'application/json' } });
    let body = null;
    try {
      body = await resp.json();
    } catch (_) {
      body = null;
    }
    if (!resp.ok) {
      throw new Error((body && body.error) || `${url}: HTTP ${resp.status}`);
    }
    return body;
  }

  const pad = (n) => String(n).padStart(2, '0');
  const clock = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;

  function ago(iso) {
    const secs = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (secs < 120) return `${secs}s ago`;
    const mins = Math.floor(secs / 60);
    if (mins < 120) return `${mins}m ago`;
    const hours = Math.floor(mins / 60);
    if (hours < 48) return `${hours}h ago`;
    return `${Math.floor(hours / 24)}d ago`;
  }

  function timeCell(iso, col) {
    if (!iso) return el('td', { 'data-col': col }, '—');
    const d = new Date(iso);
    return el('td', { 'data-col': col },
      el('time', { datetime: iso, title: d.toString() }, `${clock(d)} (${ago(iso)})`));
  }

  const plural = (n, what) => `${n} ${what}${n === 1 ? '' : 's'}`;

  function idFor(text) {
    return text.toLowerCase().replace(/[^a-z0-9-]/g, '-');
  }

  // ---- the "updated HH:MM:SS / version N" indicator ----

  function showIndicator() {
    const p = $('updated');
    const how = {
      live: 'live',
      polling: 'polling every 2 s',
      connecting: 'connecting…',
      reconnecting: 'reconnecting…',
    }[state.mode] || state.mode;
    const when = state.updatedAt ? `updated ${clock(state.updatedAt)}` : 'not loaded yet';
    p.textContent = `${when} · version ${state.version} · ${how}`;
    p.dataset.version = String(state.version);
    p.dataset.mode = state.mode;
    p.classList.toggle('offline', state.mode !== 'live');
  }

  function showError(message) {
    const p = $('error');
    p.textContent = message || '';
    p.hidden = !message;
  }

  // ---- location: #cluster=NAME&tab=peers ----

  function readHash() {
    const h = new URLSearchParams(location.hash.slice(1));
    const tab = h.get('tab');
    return { cluster: h.get('cluster'), tab: TABS.includes(tab) ? tab : 'services' };
  }

  function writeHash() {
    const h = new URLSearchParams();
    if (state.cluster) h.set('cluster', state.cluster);
    if (state.tab !== 'services') h.set('tab', state.tab);
    history.replaceState(null, '', `#${h.toString()}`);
  }

  // ---- clusters ----

  function showClusters() {
    const select = $('cluster-select');
    const names = state.clusters.map((c) => c.name);
    const have = Array.from(select.options).map((o) => o.value);
    if (names.join('\n') !== have.join('\n')) {
      select.replaceChildren(...names.map((n) => el('option', { value: n }, n)));
    }
    select.value = state.cluster || '';
    select.disabled = names.length < 2;
    const c = state.clusters.find((x) => x.name === state.cluster);
    $('cluster-info').textContent = c
      ? `cluster ${c.name} · network ${c.network || '—'} · segment ${c.segment || 'default'} · ` +
        `${plural(c.globalServices, 'global service')} · ${plural(c.peers, 'peer')} · ` +
        `${plural(c.problems || 0, 'problem')}`
      : '';
  }

  async function loadClusters() {
    const list = await getJSON('/api/v1/clusters');
    state.clusters = list.clusters || [];
    const names = state.clusters.map((c) => c.name);
    if (!names.includes(state.cluster)) {
      const wanted = readHash().cluster;
      state.cluster = names.includes(wanted) ? wanted : (names[0] || null);
    }
    showClusters();
    return state.clusters.find((c) => c.name === state.cluster);
  }

  // ---- services ----

  function matches(s, f) {
    if (!f) return true;
    const hay = [s.hostname, s.scope, s.segment || 'default', s.vip, s.trafficDistribution,
      s.takeover || '', ...s.clusters].join(' ').toLowerCase();
    return hay.includes(f);
  }

  function endpointTable(c) {
    if (c.endpoints.length === 0) {
      return el('p', { class: 'empty' }, `no ready endpoint in ${c.cluster}`);
    }
    return el('table', { 'data-testid': 'endpoint-table', 'data-cluster': c.cluster },
      el('caption', {}, `Endpoints in ${c.cluster}`),
      el('thead', {}, el('tr', {},
        ['Name', 'Address', 'Ready', 'Locality', 'Ports'].map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, c.endpoints.map((e) => el('tr', { 'data-testid': 'endpoint-row', 'data-address': e.address },
        el('th', { scope: 'row', class: 'mono' }, e.name || '(unnamed)'),
        el('td', { class: 'mono' }, e.address),
        el('td', {}, e.ready ? badge('ready', 'ok') : badge('not ready', 'bad')),
        el('td', {}, e.locality || '(unknown)'),
        el('td', { class: 'mono' }, e.ports.map((p) => `${p.port}→${p.target}`).join(', '))))));
  }

  function routeTable(s) {
    return el('table', { 'data-testid': 'route-table' },
      el('caption', {}, 'L7 routes (HTTPRoutes of this cluster)'),
      el('thead', {}, el('tr', {},
        ['Port', 'Route', 'Rules', 'Status'].map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, s.routes.map((r) => el('tr', { 'data-testid': 'route-row', 'data-route': r.route },
        el('td', { class: 'mono' }, String(r.port)),
        el('th', { scope: 'row', class: 'mono' }, r.route),
        el('td', {}, String(r.rules)),
        el('td', {}, r.conditions.map((c) => badge(
          `${c.type} ${c.status}${c.reason ? ` (${c.reason})` : ''}`,
          c.type === 'meshpeer.io/Conflicted' ? 'warn' : (c.status === 'True' ? 'ok' : 'bad'),
          { title: c.message || '' })))))));
  }

  function detailsRow(s, id) {
    const cell = el('td', { colspan: 10 });
    if (s.routes && s.routes.length) {
      cell.append(routeTable(s));
    }
    for (const c of s.contributions) {
      const how = { local: 'this cluster', direct: 'same network, direct', gateway: 'through its east-west gateway' }[c.reach] || c.reach;
      cell.append(el('h3', {}, `${c.cluster} · network ${c.network} · ${how}${c.stale ? ' · stale (peer disconnected)' : ''}`));
      cell.append(endpointTable(c));
    }
    if (s.takeover) {
      cell.append(el('p', {}, `This cluster takes over ${s.takeover}.`));
    }
    return el('tr', { class: 'details', id, 'data-testid': 'service-details', 'data-hostname': s.hostname }, cell);
  }

  function serviceRow(s) {
    const detailsId = `details-${idFor(s.hostname)}`;
    const open = state.expanded.has(s.hostname);
    const toggle = el('button', {
      type: 'button', class: 'toggle', 'aria-expanded': open ? 'true' : 'false',
      'aria-controls': detailsId, 'data-testid': 'toggle-endpoints', 'data-focus': `toggle:${s.hostname}`,
    }, open ? 'Hide endpoints' : 'Endpoints');
    toggle.setAttribute('aria-label', `${open ? 'Hide' : 'Show'} endpoints of ${s.hostname}`);
    toggle.addEventListener('click', () => {
      if (state.expanded.has(s.hostname)) state.expanded.delete(s.hostname);
      else state.expanded.add(s.hostname);
      renderServices();
    });
    const takeover = s.takeover
      ? el('span', { class: 'mono' }, s.takeover)
      : (s.takenOver ? 'by another cluster' : '—');
    const row = el('tr', {
      'data-testid': 'service-row', 'data-hostname': s.hostname, 'data-clusters': s.clusters.join(','),
    },
    el('th', { scope: 'row', class: 'mono', 'data-col': 'hostname' }, s.hostname),
    el('td', { 'data-col': 'scope' }, s.scope),
    el('td', { 'data-col': 'segment' }, s.segment || 'default'),
    el('td', { class: 'mono', 'data-col': 'vip' }, s.vip),
    el('td', { class: 'mono', 'data-col': 'ports' }, s.ports.map((p) => {
      const routed = (s.routes || []).some((r) => r.port === p.number);
      return `${p.number}/${p.protocol}${routed ? ' (L7 routes)' : ''}`;
    }).join(', ')),
    el('td', { 'data-col': 'distribution' }, s.trafficDistribution),
    el('td', { 'data-col': 'takeover' }, takeover),
    el('td', { 'data-col': 'clusters' }, s.clusters.join(', ')),
    el('td', { 'data-col': 'endpoints' }, s.contributions.map((c) => badge(
      `${c.cluster} ${c.ready}/${c.total}${c.stale ? ' stale' : ''}`,
      c.ready === 0 ? 'bad' : (c.stale ? 'warn' : 'ok'),
      { 'data-testid': 'endpoints-count', 'data-cluster': c.cluster, title: `${c.ready} ready of ${c.total} in ${c.cluster}` }))),
    el('td', {}, toggle));
    return open ? [row, detailsRow(s, detailsId)] : [row];
  }

  function renderServices() {
    const list = state.services;
    if (!list) return;
    const focused = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.focus : null;
    const shown = list.services.filter((s) => matches(s, state.filter));
    $('services-body').replaceChildren(...shown.flatMap(serviceRow));
    $('services-count').textContent = shown.length === list.services.length
      ? `(${list.services.length})` : `(${shown.length} of ${list.services.length})`;
    $('services-empty').hidden = list.services.length !== 0;
    if (focused) {
      const again = document.querySelector(`[data-focus="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
  }

  // ---- peers ----

  function conditionsList(conditions) {
    return el('ul', { class: 'conditions' }, conditions.map((c) => {
      const kind = c.status === 'True' ? 'ok' : (c.status === 'False' ? 'bad' : 'warn');
      const short = c.type.replace(/^.*\//, '');
      return el('li', { 'data-testid': 'condition', 'data-type': c.type, 'data-status': c.status },
        badge(`${short}: ${c.status}`, kind, { title: c.type }),
        c.reason ? ` ${c.reason}` : '',
        c.message ? el('span', { class: 'message' }, c.message) : null);
    }));
  }

  function peerRow(p) {
    const kind = p.state === 'Synced' ? 'ok' : (p.state === 'Connected' || p.state === 'Connecting' ? 'warn' : 'bad');
    return el('tr', { 'data-testid': 'peer-row', 'data-peer': p.cluster, 'data-state': p.state },
      el('th', { scope: 'row' }, p.cluster, el('div', { class: 'info mono' }, p.gateway)),
      el('td', { 'data-col': 'state' },
        badge(p.state, kind, { 'data-testid': 'peer-state' }),
        p.stale ? badge('stale', 'warn') : null,
        p.lastError ? el('div', { class: 'error' }, p.lastError) : null),
      el('td', { class: 'mono', 'data-col': 'address' }, p.remote || p.addresses.join(', ') || '—'),
      timeCell(p.connectedSince, 'connected-since'),
      timeCell(p.lastSync, 'last-sync'),
      el('td', { 'data-col': 'services' }, `${p.services}${p.version !== null && p.version !== undefined ? ` (export v${p.version})` : ''}`),
      el('td', { 'data-col': 'conditions' }, conditionsList(p.conditions)));
  }

  function renderPeers() {
    const list = state.peers;
    if (!list) return;
    $('peers-body').replaceChildren(...list.peers.map(peerRow));
    $('peers-empty').hidden = list.peers.length !== 0;
    const out = $('output-error');
    out.textContent = list.outputError ? `Writing the output failed: ${list.outputError}` : '';
    out.hidden = !list.outputError;
  }

  // ---- problems ----

  function bySeverity(a, b) {
    return (SEVERITY_RANK[a.severity] ?? 3) - (SEVERITY_RANK[b.severity] ?? 3);
  }

  function problemRow(d, cluster) {
    return el('tr', {
      'data-testid': 'problem-row', 'data-rule': d.rule, 'data-severity': d.severity, 'data-object': d.object,
    },
    el('td', { 'data-col': 'severity' }, badge(d.severity, SEVERITY_BADGE[d.severity] || null)),
    el('td', { class: 'mono', 'data-col': 'rule' }, d.rule),
    el('th', { scope: 'row', class: 'mono', 'data-col': 'object' }, d.object,
      d.cluster && d.cluster !== cluster ? el('div', { class: 'info' }, `cluster ${d.cluster}`) : null),
    el('td', { class: 'mono', 'data-col': 'field' }, d.field || '—'),
    el('td', { 'data-col': 'message' }, d.message));
  }

  // The tab's badge: errors and warnings, red when one is an error.
  function showProblemsBadge(list) {
    const errors = list.diagnostics.filter((d) => d.severity === 'error').length;
    const warnings = list.diagnostics.filter((d) => d.severity === 'warning').length;
    const count = errors + warnings;
    const b = $('problems-badge');
    b.textContent = String(count);
    b.dataset.count = String(count);
    b.dataset.severity = errors ? 'error' : (warnings ? 'warning' : 'none');
    b.className = `badge count ${errors ? 'bad' : 'warn'}`;
    b.hidden = count === 0;
    const parts = [];
    if (errors) parts.push(plural(errors, 'error'));
    if (warnings) parts.push(plural(warnings, 'warning'));
    b.title = parts.join(', ');
    $('tab-problems').setAttribute('aria-label', parts.length ? `Problems: ${parts.join(', ')}` : 'Problems');
    return count;
  }

  function renderProblems() {
    const list = state.diagnostics;
    if (!list) return;
    const sorted = list.diagnostics.slice().sort(bySeverity);
    $('problems-body').replaceChildren(...sorted.map((d) => problemRow(d, list.cluster)));
    $('problems-count').textContent = `(${list.diagnostics.length})`;
    $('problems-empty').hidden = list.diagnostics.length !== 0;
    return showProblemsBadge(list);
  }

  // ---- traffic ----

  // svg('path', {d: ...}, child, ...): an SVG element; text as text nodes.
  function svg(tag, attrs, ...children) {
    // The namespace of the page's own <svg> (the HTML parser gives it).
    const node = document.createElementNS($('traffic-graph').namespaceURI, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      node.setAttribute(k, String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function fmtRate(x) {
    if (!x) return '0';
    if (x >= 10) return x.toFixed(0);
    if (x >= 1) return x.toFixed(1);
    return x.toFixed(2);
  }

  const fmtPercent = (x) => `${x >= 0.1 || x === 0 ? (x * 100).toFixed(0) : (x * 100).toFixed(1)}%`;

  function fmtBytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
  }

  const clusterLabel = (c) => ({ none: 'no endpoint', unlinked: 'unlinked' }[c] || c);

  // The flows shown: the selected service's, or all.
  function shownFlows() {
    const flows = (state.traffic && state.traffic.flows) || [];
    return state.trafficService ? flows.filter((f) => f.service === state.trafficService) : flows;
  }

  // One edge per (source, destination): flows of every service (or the one
  // selected) summed; where the proxy and the gateway both saw a flow, the
  // proxy's count is the caller's and is kept.
  function edgesOf(flows) {
    const seen = new Map();
    for (const f of flows) {
      const key = `${f.sourceCluster}\u0000${f.destinationCluster}\u0000${f.service}`;
      const had = seen.get(key);
      if (!had || (had.reporter === 'gateway' && f.reporter === 'proxy')) seen.set(key, f);
    }
    const edges = new Map();
    for (const f of seen.values()) {
      const key = `${f.sourceCluster}\u0000${f.destinationCluster}`;
      const e = edges.get(key) || {
        source: f.sourceCluster, destination: f.destinationCluster, services: new Set(),
        connections: 0, failures: 0, cps: 0, fps: 0, bps: 0,
      };
      e.services.add(f.service);
      e.connections += f.connections;
      e.failures += f.failures;
      e.cps += f.connectionsPerSecond;
      e.fps += f.failuresPerSecond;
      e.bps += f.bytesSentPerSecond + f.bytesReceivedPerSecond;
      edges.set(key, e);
    }
    for (const e of edges.values()) {
      e.errorRate = e.cps > 0 ? Math.min(1, e.fps / e.cps) : (e.connections ? e.failures / e.connections : 0);
    }
    return Array.from(edges.values());
  }

  function edgeKind(e) {
    if (e.errorRate >= ERROR_BAD) return 'bad';
    if (e.errorRate >= ERROR_WARN) return 'warn';
    return e.cps > 0 ? 'ok' : 'idle';
  }

  // Nodes: this cluster first (on the left), its peers, then any other
  // cluster a flow names; evenly on a circle.
  function layout(edges) {
    const names = [state.cluster];
    const add = (n) => {
      if (n && !names.includes(n)) names.push(n);
    };
    for (const p of (state.peers && state.peers.peers) || []) add(p.cluster);
    for (const e of edges) {
      add(e.source);
      add(e.destination);
    }
    // Two clusters side by side need less height than a ring of them.
    const height = names.length <= 2 ? 300 : 440;
    const [cx, cy, r] = [360, names.length <= 2 ? 170 : 225, 150];
    const pos = new Map();
    names.forEach((n, i) => {
      if (names.length === 1) {
        pos.set(n, { x: cx, y: cy });
        return;
      }
      const a = Math.PI + (2 * Math.PI * i) / names.length;
      pos.set(n, { x: cx + (names.length === 2 ? 1.4 : 1) * r * Math.cos(a), y: cy + r * Math.sin(a) });
    });
    return { pos, height };
  }

  const NODE_R = 42;

  function edgeLabel(e) {
    return `${e.connections} conn · ${fmtRate(e.cps)}/s · ${fmtPercent(e.errorRate)} err`;
  }

  function edgeTitle(e) {
    return `${clusterLabel(e.source)} → ${clusterLabel(e.destination)}: ${e.connections} connections, ` +
      `${e.failures} failed; now ${fmtRate(e.cps)}/s, ${fmtPercent(e.errorRate)} errors, ` +
      `${fmtBytes(Math.round(e.bps))}/s; services: ${Array.from(e.services).join(', ')}`;
  }

  function drawEdge(e, pos) {
    const a = pos.get(e.source);
    const b = pos.get(e.destination);
    const kind = edgeKind(e);
    const width = 1.5 + Math.min(6, Math.log2(1 + e.cps));
    let d;
    let lx;
    let ly;
    let anchor = 'middle';
    // The arrowhead: at (tx, ty), pointing from (fx, fy).
    let head;
    if (e.source === e.destination) {
      // A loop above the node: this cluster's clients served at home.
      const x = a.x;
      const y = a.y - NODE_R;
      d = `M ${x - 14} ${y + 4} C ${x - 60} ${y - 80}, ${x + 60} ${y - 80}, ${x + 14} ${y + 4}`;
      lx = x;
      ly = y - 66;
      head = { fx: x + 60, fy: y - 80, tx: x + 14, ty: y + 4 };
    } else {
      // A curve bent to its left, so that A→B and B→A do not overlap.
      const dx = b.x - a.x;
      const dy = b.y - a.y;
      const len = Math.hypot(dx, dy) || 1;
      const [ux, uy] = [dx / len, dy / len];
      const [nx, ny] = [uy, -ux];
      const bend = 36;
      const sx = a.x + ux * NODE_R + nx * 10;
      const sy = a.y + uy * NODE_R + ny * 10;
      const ex = b.x - ux * (NODE_R + 4) + nx * 10;
      const ey = b.y - uy * (NODE_R + 4) + ny * 10;
      const mx = (a.x + b.x) / 2 + nx * bend;
      const my = (a.y + b.y) / 2 + ny * bend;
      d = `M ${sx.toFixed(1)} ${sy.toFixed(1)} Q ${mx.toFixed(1)} ${my.toFixed(1)} ${ex.toFixed(1)} ${ey.toFixed(1)}`;
      // The label beside the curve's middle, on the outer side of its bend.
      lx = (sx + 2 * mx + ex) / 4 + nx * 14;
      ly = (sy + 2 * my + ey) / 4 + ny * 14 + 4;
      // ...and growing away from it.
      if (nx > 0.3) anchor = 'start';
      else if (nx < -0.3) anchor = 'end';
      head = { fx: mx, fy: my, tx: ex, ty: ey };
    }
    // A triangle drawn in place (no marker to refer to).
    const hl = Math.hypot(head.tx - head.fx, head.ty - head.fy) || 1;
    const [hx, hy] = [(head.tx - head.fx) / hl, (head.ty - head.fy) / hl];
    const size = 8 + width;
    const pts = [
      [head.tx, head.ty],
      [head.tx - hx * size - hy * size * 0.55, head.ty - hy * size + hx * size * 0.55],
      [head.tx - hx * size + hy * size * 0.55, head.ty - hy * size - hx * size * 0.55],
    ].map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(' ');
    return svg('g', {
      class: `edge ${kind}`, 'data-testid': 'traffic-edge', 'data-source': e.source, 'data-destination': e.destination,
      'data-connections': e.connections, 'data-failures': e.failures, 'data-rate': e.cps.toFixed(3),
      'data-error-rate': e.errorRate.toFixed(4), 'data-kind': kind,
    },
    svg('title', {}, edgeTitle(e)),
    svg('path', { d, 'stroke-width': width.toFixed(1) }),
    svg('polygon', { points: pts, class: 'head' }),
    svg('text', {
      x: lx.toFixed(1), y: ly.toFixed(1), 'text-anchor': anchor, 'data-testid': 'traffic-edge-label',
    }, edgeLabel(e)));
  }

  function drawNode(name, p) {
    const kind = name === state.cluster ? 'self' : (name === 'none' || name === 'unlinked' ? name : 'peer');
    return svg('g', { class: `node ${kind}`, 'data-testid': 'traffic-node', 'data-cluster': name },
      svg('title', {}, name === state.cluster ? `${name} (this cluster)` : clusterLabel(name)),
      svg('circle', { cx: p.x.toFixed(1), cy: p.y.toFixed(1), r: NODE_R }),
      svg('text', { x: p.x.toFixed(1), y: (p.y + 5).toFixed(1) }, clusterLabel(name)));
  }

  function drawGraph(edges) {
    const { pos, height } = layout(edges);
    const graph = $('traffic-graph');
    graph.setAttribute('viewBox', `0 0 720 ${height}`);
    const parts = edges.map((e) => drawEdge(e, pos));
    for (const [name, p] of pos) parts.push(drawNode(name, p));
    if (!edges.length) {
      parts.push(svg('text', { x: 360, y: height - 20, class: 'empty-graph' },
        state.trafficService ? `no traffic reported for ${state.trafficService}` : 'no traffic reported yet'));
    }
    graph.replaceChildren(...parts);
  }

  function trafficRow(f) {
    return el('tr', {
      'data-testid': 'traffic-row', 'data-source': f.sourceCluster, 'data-destination': f.destinationCluster,
      'data-service': f.service, 'data-reporter': f.reporter, 'data-connections': f.connections, 'data-failures': f.failures,
    },
    el('td', { 'data-col': 'source' }, clusterLabel(f.sourceCluster)),
    el('td', { 'data-col': 'destination' }, clusterLabel(f.destinationCluster)),
    el('th', { scope: 'row', class: 'mono', 'data-col': 'service' }, f.service),
    el('td', { 'data-col': 'reporter' }, f.reporter === 'proxy' ? 'proxy (outbound)' : 'gateway (inbound)'),
    el('td', { 'data-col': 'connections' }, String(f.connections)),
    el('td', { 'data-col': 'failures' }, f.failures ? badge(String(f.failures), 'bad') : '0'),
    el('td', { 'data-col': 'rate' }, `${fmtRate(f.connectionsPerSecond)}/s`),
    el('td', { 'data-col': 'error-rate' }, fmtPercent(f.errorRate)),
    el('td', { 'data-col': 'bytes' }, `${fmtBytes(f.bytesSent)} / ${fmtBytes(f.bytesReceived)}`));
  }

  function showServiceChoice() {
    const select = $('traffic-service');
    const names = new Set();
    for (const s of (state.services && state.services.services) || []) names.add(s.hostname);
    for (const f of (state.traffic && state.traffic.flows) || []) names.add(f.service);
    const sorted = Array.from(names).sort();
    const have = Array.from(select.options).slice(1).map((o) => o.value);
    if (sorted.join('\n') !== have.join('\n')) {
      select.replaceChildren(el('option', { value: '' }, 'All global services'),
        ...sorted.map((n) => el('option', { value: n }, n)));
    }
    if (state.trafficService && !names.has(state.trafficService)) state.trafficService = '';
    select.value = state.trafficService;
  }

  function renderTraffic() {
    showServiceChoice();
    const flows = shownFlows();
    drawGraph(edgesOf(flows));
    $('traffic-body').replaceChildren(...flows.map(trafficRow));
    const all = ((state.traffic && state.traffic.flows) || []).length;
    $('traffic-count').textContent = flows.length === all ? `(${all})` : `(${flows.length} of ${all})`;
    $('traffic-empty').hidden = flows.length !== 0;
    const t = state.traffic;
    const reporters = (t && t.reporters) || [];
    $('traffic-updated').textContent = state.trafficAt
      ? `updated ${clock(state.trafficAt)} · ${plural(reporters.length, 'reporter')} · every 2 s`
      : '';
  }

  async function loadTraffic() {
    if (!state.cluster || state.trafficInFlight) return;
    state.trafficInFlight = true;
    try {
      const t = await getJSON(`/api/v1/traffic?cluster=${encodeURIComponent(state.cluster)}`);
      if (t.cluster === state.cluster || !t.cluster) {
        state.traffic = t;
        state.trafficAt = new Date();
        renderTraffic();
      }
    } catch (e) {
      showError(`Cannot load the traffic: ${e.message}`);
    } finally {
      state.trafficInFlight = false;
    }
  }

  // ---- loading ----

  // Loads the selected cluster's services, peers and diagnostics; a call
  // made while one is in flight runs once more after it, so the last change
  // is never lost.
  async function refresh() {
    if (state.inFlight) {
      state.again = true;
      return;
    }
    state.inFlight = true;
    try {
      do {
        state.again = false;
        if (!state.cluster) await loadClusters();
        if (!state.cluster) {
          showError('This server serves no cluster.');
          break;
        }
        const q = `cluster=${encodeURIComponent(state.cluster)}`;
        const [services, peers, diagnostics] = await Promise.all([
          getJSON(`/api/v1/services?${q}`),
          getJSON(`/api/v1/peers?${q}`),
          getJSON(`/api/v1/diagnostics?${q}`),
        ]);
        state.services = services;
        state.peers = peers;
        state.diagnostics = diagnostics;
        state.version = services.version;
        state.updatedAt = new Date();
        const c = state.clusters.find((x) => x.name === state.cluster);
        if (c) {
          c.version = Math.max(c.version, services.version);
          c.globalServices = services.services.length;
          c.peers = peers.peers.length;
        }
        const problems = renderProblems();
        if (c) c.problems = problems;
        showClusters();
        renderServices();
        renderPeers();
        if (state.tab === 'traffic') renderTraffic();
        showError(null);
        showIndicator();
      } while (state.again);
    } catch (e) {
      showError(`Cannot load from the controller: ${e.message}`);
    } finally {
      state.inFlight = false;
    }
  }

  async function poll() {
    try {
      const c = await loadClusters();
      if (c && c.version !== state.version) await refresh();
      else showError(null);
    } catch (e) {
      showError(`Cannot reach the controller: ${e.message}`);
    }
  }

  function startPolling() {
    if (state.pollTimer === null) state.pollTimer = setInterval(poll, POLL_MS);
  }

  function stopPolling() {
    if (state.pollTimer !== null) {
      clearInterval(state.pollTimer);
      state.pollTimer = null;
    }
  }

  function setMode(mode) {
    state.mode = mode;
    showIndicator();
  }

  // Live refresh: one event per view change; polling while the stream is
  // down (or when EventSource is missing, or asked for with ?live=poll).
  function connectEvents() {
    const forcePoll = new URLSearchParams(location.search).get('live') === 'poll';
    if (forcePoll || !('EventSource' in window)) {
      setMode('polling');
      startPolling();
      return;
    }
    const es = new EventSource('/api/v1/events');
    state.events = es;
    es.onopen = () => {
      stopPolling();
      setMode('live');
      refresh();
    };
    es.onmessage = (m) => {
      let ev;
      try {
        ev = JSON.parse(m.data);
      } catch (_) {
        return;
      }
      const c = state.clusters.find((x) => x.name === ev.cluster);
      if (c) c.version = ev.version;
      if (!c) {
        loadClusters().catch(() => {});
      }
      if (ev.cluster === state.cluster && ev.version !== state.version) refresh();
    };
    es.onerror = () => {
      startPolling();
      if (es.readyState === EventSource.CLOSED) {
        setMode('polling');
        state.events = null;
        setTimeout(connectEvents, RECONNECT_MS);
      } else {
        setMode('reconnecting');
      }
    };
  }

  // ---- tabs, selector, filter ----

  function selectTab(tab, focus) {
    state.tab = tab;
    for (const name of TABS) {
      const button = $(`tab-${name}`);
      const on = name === tab;
      button.setAttribute('aria-selected', on ? 'true' : 'false');
      button.tabIndex = on ? 0 : -1;
      $(`panel-${name}`).hidden = !on;
      if (on && focus) button.focus();
    }
    writeHash();
    if (tab === 'traffic') {
      renderTraffic();
      loadTraffic();
    }
  }

  function wire() {
    for (const name of TABS) {
      const button = $(`tab-${name}`);
      button.addEventListener('click', () => selectTab(name, false));
      button.addEventListener('keydown', (e) => {
        const i = TABS.indexOf(state.tab);
        const to = {
          ArrowRight: (i + 1) % TABS.length,
          ArrowLeft: (i + TABS.length - 1) % TABS.length,
          Home: 0,
          End: TABS.length - 1,
        }[e.key];
        if (to !== undefined) {
          e.preventDefault();
          selectTab(TABS[to], true);
        }
      });
    }
    $('cluster-select').addEventListener('change', (e) => {
      state.cluster = e.target.value;
      state.version = 0;
      state.expanded.clear();
      state.traffic = null;
      state.trafficService = '';
      writeHash();
      refresh();
      if (state.tab === 'traffic') loadTraffic();
    });
    $('traffic-service').addEventListener('change', (e) => {
      state.trafficService = e.target.value;
      renderTraffic();
    });
    $('filter').addEventListener('input', (e) => {
      state.filter = e.target.value.trim().toLowerCase();
      renderServices();
    });
    window.addEventListener('hashchange', () => {
      const h = readHash();
      if (h.tab !== state.tab) selectTab(h.tab, false);
      if (h.cluster && h.cluster !== state.cluster && state.clusters.some((c) => c.name === h.cluster)) {
        state.cluster = h.cluster;
        state.version = 0;
        refresh();
      }
    });
  }

  async function start() {
    wire();
    selectTab(readHash().tab, false);
    showIndicator();
    try {
      await loadClusters();
    } catch (e) {
      showError(`Cannot load from the controller: ${e.message}`);
    }
    writeHash();
    await refresh();
    connectEvents();
    setInterval(() => {
      if (state.tab === 'peers') renderPeers();
    }, AGES_MS);
    // Traffic changes without a view change: poll it while it is shown.
    setInterval(() => {
      if (state.tab === 'traffic') loadTraffic();
    }, POLL_MS);
  }

  start();
})();
