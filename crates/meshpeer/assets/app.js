// The "Global services" page: reads the JSON API of the server that sent it
// (see /assets/API.md), redraws on every view change announced on
// /api/v1/events, and polls every 2 s when the event stream is unavailable.
// No framework and no build step: plain DOM, text set with textContent only.
'use strict';

(() => {
  const POLL_MS = 2000;
  // How often "connected 5m ago" is redrawn between changes.
  const AGES_MS = 10000;
  const RECONNECT_MS = 5000;
  const TABS = ['services', 'peers', 'problems'];
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

  function detailsRow(s, id) {
    const cell = el('td', { colspan: 10 });
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
    el('td', { class: 'mono', 'data-col': 'ports' }, s.ports.map((p) => `${p.number}/${p.protocol}`).join(', ')),
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
      writeHash();
      refresh();
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
  }

  start();
})();
