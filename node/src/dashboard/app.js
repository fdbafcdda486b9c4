'use strict';
/* kOS operator dashboard: plain DOM, no framework, no build step.
 *
 * Everything the API returns is untrusted (titles, comments, ids): it reaches the page through
 * textContent and attributes only, never through HTML parsing. The CSP forbids inline code and
 * styles; geometry (bar widths, marker positions) is set through the CSSOM, which it allows.
 *
 * Sign-in: a one-time code in the URL fragment (#code=…, from `kosctl dashboard`) or the API
 * token typed into the login form is exchanged for a session token (POST /v1/session), kept in
 * sessionStorage. The page polls /v1/status and refreshes the visible view when the node's
 * state moved; forms are built once per page so a refresh never loses what is being typed. */
(function () {
  const SESSION_KEY = 'kos.session';
  const POLL_MS = 2000;
  const MAX_STALE_MS = 10000;
  const $ = (sel, root = document) => root.querySelector(sel);

  // ---------------------------------------------------------------- DOM helpers

  /** An element: props are attributes (`text` → textContent, `on…` → listeners, booleans →
   *  properties such as hidden/disabled), children are nodes or strings (text nodes). */
  function h(tag, props, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k === 'testid') el.setAttribute('data-testid', v);
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (v === true) el[k] = true;
      else el.setAttribute(k, String(v));
    }
    el.append(...kids.flat(Infinity).filter((k) => k != null && k !== false));
    return el;
  }

  /** Replaces the children of `el` (null and false skipped, arrays flattened). */
  const put = (el, ...kids) => el.replaceChildren(...kids.flat(Infinity).filter((k) => k != null && k !== false));

  /** Runs a re-render of `root`, giving focus back to the element with the same data-key. */
  function keepFocus(root, fn) {
    const a = document.activeElement;
    const key = a && root.contains(a) ? a.getAttribute('data-key') : null;
    fn();
    const again = key && !root.contains(document.activeElement) && root.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (again) again.focus({ preventScroll: true });
  }

  // ---------------------------------------------------------------- formatting (as kosctl)

  /** Milli-units as a number of votes: 9, 4.5, 0.333 (cli/src/render.rs `number`). */
  function number(milli) {
    const m = Math.max(0, Math.round(Number(milli) || 0));
    const frac = m % 1000;
    return `${Math.floor(m / 1000)}${frac ? `.${String(frac).padStart(3, '0').replace(/0+$/, '')}` : ''}`;
  }
  const weight = (milli) => `${number(milli)} ${Math.round(milli) === 1000 ? 'vote' : 'votes'}`;
  /** A fraction as a percentage with at most one decimal: 30 %, 33.4 %. */
  function pct(x) {
    const tenths = Math.round((Number(x) || 0) * 1000);
    return `${tenths % 10 === 0 ? tenths / 10 : (tenths / 10).toFixed(1)} %`;
  }
  /** "3/10" or [3, 10] as a number, or null. */
  function ratio(r) {
    const parts = Array.isArray(r) ? r : String(r ?? '').split('/');
    const n = Number(parts[0]), d = Number(parts[1]);
    return parts.length === 2 && Number.isFinite(n) && d > 0 ? n / d : null;
  }
  const share = (part, whole) => (whole > 0 ? part / whole : 0);
  const clamp01 = (x) => Math.min(1, Math.max(0, x || 0));

  /** A UTC date: 2026-11-23 06:10 UTC (with seconds when asked), as kosctl prints them. */
  function date(ms, seconds) {
    const iso = new Date(ms).toISOString();
    return `${iso.slice(0, 10)} ${iso.slice(11, seconds ? 19 : 16)} UTC`;
  }
  /** A duration in its two largest units: 3 h 12 min, 45 s, 2 d 4 h. */
  function duration(ms) {
    const s = Math.floor(Math.max(0, ms) / 1000);
    const units = [[Math.floor(s / 86400), 'd'], [Math.floor(s / 3600) % 24, 'h'], [Math.floor(s / 60) % 60, 'min'], [s % 60, 's']];
    const first = Math.max(0, units.findIndex(([n]) => n > 0));
    return units.slice(first, first + 2).filter(([n]) => n > 0).map(([n, u]) => `${n} ${u}`).join(' ') || '0 s';
  }
  const relative = (ms, now = Date.now()) => (ms >= now ? `in ${duration(ms - now)}` : `${duration(now - ms)} ago`);
  /** A <time>: relative text, the date in its tooltip (or the other way round). */
  function when(ms, opts = {}) {
    if (ms == null) return h('span', { text: '—' });
    const iso = new Date(ms).toISOString();
    const rel = relative(ms);
    return opts.dateFirst
      ? h('time', { datetime: iso, title: rel }, date(ms, opts.seconds), h('span', { class: 'muted', text: ` (${rel})` }))
      : h('time', { datetime: iso, title: date(ms, true) }, rel);
  }
  /** did:key:z6MkiSzy…zC27T → z6MkiS…zC27T (the whole id in the tooltip). */
  function short(id, head = 6, tail = 5) {
    const s = String(id || '').replace(/^did:key:/, '').replace(/^peer:\/\//, '');
    return s.length > head + tail + 1 ? `${s.slice(0, head)}…${tail ? s.slice(-tail) : ''}` : s || '—';
  }
  const ident = (id, head, tail) => h('span', { class: 'mono', title: id }, short(id, head, tail));
  const me = () => (live.status ? live.status.member : null);
  const words = (s) => String(s || '').replace(/_/g, ' ');
  const cap = (s) => words(s).replace(/^./, (c) => c.toUpperCase());

  // ---------------------------------------------------------------- governance vocabulary

  // Proposal phases in the order the list shows them: [status, name, badge tone].
  const PHASES = [['voting', 'Voting', 'active'], ['reveal', 'Reveal window', 'active'], ['discussion', 'Discussion', 'info'],
    ['seeking_sponsors', 'Seeking sponsors', 'info'], ['closed', 'Closed, awaiting finality', 'info'], ['approved', 'Approved', 'good'],
    ['executed', 'Executed', 'good'], ['execution_failed', 'Execution failed', 'bad'], ['rejected', 'Rejected', 'bad'],
    ['vetoed', 'Vetoed', 'bad'], ['failed_quorum', 'Failed quorum', 'bad'], ['expired', 'Expired', 'quiet'], ['withdrawn', 'Withdrawn', 'quiet']];
  const PHASE_NAME = Object.fromEntries(PHASES);
  const TONE = Object.fromEntries(PHASES.map(([k, , tone]) => [k, tone]));
  const ACTIVE = new Set(['voting', 'reveal', 'closed']);
  const TRUST_WEIGHT = { core: 5000, trusted: 3000, standard: 1000, sandbox: 500, quarantine: 0 };
  const BINARY = ['yes', 'no', 'abstain', 'veto'];
  const IMMUNE = /block|quarantin|immune|rejected|refused/i;

  const badge = (text, tone = 'quiet', testid) => h('span', { class: `badge badge-${tone}`, testid }, text);
  const statusBadge = (s) => badge(PHASE_NAME[s] || cap(s || 'unknown'), TONE[s] || 'quiet', 'status-badge');
  const isBinary = (rule) => !/^(plurality|instant_runoff)$/.test(String(rule || ''));

  /** The names of a tally's totals: yes/no/abstain/veto, or the options (cli `choice_labels`). */
  function choiceLabels(p, n) {
    const opts = p.options || [];
    if (opts.length === n && n > 0 && !isBinary(p.rule)) {
      return opts.map((name, i) => ({ key: `option-${i}`, name, cls: `fill-opt-${i % 6}`, index: i }));
    }
    return BINARY.map((k) => ({ key: k, name: cap(k), cls: `fill-${k}` }));
  }

  /** A rule as it reads, and the approval threshold of binary rules. Takes the command-line
   *  name or the charter's JSON form ({"supermajority": [2, 3]}). */
  function ruleInfo(rule) {
    if (rule && typeof rule === 'object' && rule.supermajority) rule = `supermajority:${rule.supermajority.join('/')}`;
    const m = /^supermajority:(\d+)\/(\d+)$/.exec(String(rule || ''));
    if (m) {
      const t = Number(m[1]) / Number(m[2]);
      return { name: `Supermajority (${pct(t)})`, needs: `needs at least ${pct(t)}`, threshold: t };
    }
    return {
      simple_majority: { name: 'Simple majority', needs: 'needs more than 50 %', threshold: 0.5 },
      consensus: { name: 'Consensus', needs: 'needs no “no” and no veto', threshold: 1 },
      plurality: { name: 'Approval (plurality)', needs: 'the most approved option wins' },
      instant_runoff: { name: 'Ranked choice (instant runoff)', needs: 'weakest options are eliminated in rounds' },
    }[rule] || { name: cap(rule || '—'), needs: '' };
  }

  /** A proposal's action in one line (cli `action_line`). */
  function actionLine(a) {
    a = a || {};
    switch (a.type) {
      case 'none': return 'None (a decision without an action)';
      case 'configuration': return `Set ${a.key} = ${a.new}${a.old != null ? ` (expects ${a.old})` : ''}`;
      case 'trust_adjustment': return `Trust of ${a.member} → ${a.level}`;
      case 'add_member': return `Admit ${a.member} as ${a.trust}`;
      case 'remove_member': return `Remove ${a.member}`;
      case 'quarantine': return `Quarantine ${a.member}`;
      case 'protocol_upgrade': return `Minimum protocol version ${a.version}`;
      case 'policy_update': return `Replace the policy (${String(a.policy || '').length} characters)`;
      case 'rollback': return `Roll back the execution of ${a.proposal}`;
      default: return words(a.type || '—');
    }
  }

  // ---------------------------------------------------------------- session and API

  // The session token lives in this tab's sessionStorage only.
  const session = {
    get token() { return sessionStorage.getItem(SESSION_KEY); },
    set: (t) => sessionStorage.setItem(SESSION_KEY, t),
    clear: () => sessionStorage.removeItem(SESSION_KEY),
  };
  const apiError = (status, message) => Object.assign(new Error(message), { status });

  /** One API call: JSON in and out, the session as bearer; errors carry the node's one line. */
  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    const token = session.token;
    if (token && (path !== '/v1/session' || method === 'DELETE')) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(path, { method, headers, cache: 'no-store', credentials: 'omit', body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (_) {
      throw apiError(0, 'cannot reach the node');
    }
    const text = await res.text();
    let data = text;
    try { data = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
    if (res.ok) return data;
    const line = data && typeof data.error === 'string' ? data.error : `HTTP ${res.status}`;
    if (res.status === 401 && path !== '/v1/session') signedOut('Your session has ended: sign in again.');
    throw apiError(res.status, line);
  }
  const get = (path) => api('GET', path);
  /** A GET that answers null instead of failing on 409 (this node follows no federation yet). */
  const getOrNull = (path) => get(path).catch((e) => { if (e.status === 409) return null; throw e; });

  const openSession = async (body) => session.set((await api('POST', '/v1/session', body)).token);

  /** The login form (and nothing else), with a message: an error unless `info`. */
  function showLogin(message, info) {
    showApp(false);
    put($('#view'));
    const box = $('#login-error');
    Object.assign(box, { hidden: !message, textContent: message || '', className: `alert ${info ? 'alert-info' : 'alert-error'}` });
    box.setAttribute('role', info ? 'status' : 'alert');
    document.title = 'Sign in · kOS';
    $('#login-token').focus();
  }

  function showApp(on) {
    $('#login').hidden = on;
    for (const id of ['nav', 'nav-toggle', 'statusbar']) $(`#${id}`).hidden = !on;
  }

  function signedOut(message, info) {
    session.clear();
    clearTimeout(live.timer);
    current = null;
    showLogin(message, info);
  }

  /** Signed in: the view in the hash; focus goes to its heading after the login form. */
  function enterApp(fromForm) {
    showApp(true);
    live.sig = '';
    route(!fromForm);
    poll();
  }

  /** A sign-in link opened in this tab: drop the code from the address bar before anything. */
  function signInWithCode(code) {
    history.replaceState(null, '', location.pathname + location.search);
    openSession({ code }).then(enterApp, (e) => showLogin(e.message));
  }

  // ---------------------------------------------------------------- polling and refresh

  const live = { status: null, sig: '', lastRefresh: 0, timer: 0 };

  async function poll() {
    clearTimeout(live.timer);
    if (!session.token) return;
    try {
      const s = await get('/v1/status');
      live.status = s;
      renderStatus(s);
      // Refresh when the node's state moved, and at least every 10 s (relative times).
      const sig = `${s.messages}|${s.state_hash}|${(s.peers || []).length}`;
      const moved = live.sig !== '' && sig !== live.sig;
      live.sig = sig;
      if (moved || Date.now() - live.lastRefresh >= MAX_STALE_MS) refresh();
    } catch (e) {
      if (!session.token) return; // signed out by a 401
      renderStatus(null, e.message);
    }
    live.timer = setTimeout(poll, POLL_MS);
  }

  function renderStatus(s, error) {
    const el = $('#node-status');
    const dot = h('span', { class: 'dot', 'aria-hidden': 'true' });
    el.classList.toggle('is-down', !s);
    if (!s) return put(el, dot, `Node unreachable (${error}) — retrying`);
    const peers = (s.peers || []).length;
    return put(el, dot, h('span', {}, 'Node ', ident(s.peer_id, 8, 4)), h('span', { text: `${peers} peer${peers === 1 ? '' : 's'}` }),
      h('span', { text: `${s.messages} messages` }), s.pending ? h('span', { text: `${s.pending} pending` }) : null,
      s.state_hash ? h('span', { class: 'hide-sm' }, 'state ', ident(s.state_hash, 8, 4)) : h('span', { text: 'no federation' }));
  }

  let current = null; // { route, view, root, parts, focus }
  let inflight = null;
  let again = false;

  /** Loads and renders the current view; calls during a refresh queue one more. */
  function refresh() {
    if (inflight) { again = true; return inflight; }
    inflight = (async () => {
      do { again = false; await refreshOnce(); } while (again);
    })().finally(() => { inflight = null; });
    return inflight;
  }

  async function refreshOnce() {
    const cur = current;
    if (!cur) return;
    live.lastRefresh = Date.now();
    try {
      const data = await cur.view.load(cur.route);
      if (cur !== current) return;
      keepFocus(cur.root, () => cur.view.render(cur, data));
      cur.rendered = true;
    } catch (e) {
      if (cur !== current || !session.token) return;
      // A view already shown keeps its content under the error; a first load shows just it.
      const box = h('p', { class: 'alert alert-error view-error', role: 'alert' }, `Could not load this page: ${e.message}`);
      if (!cur.rendered) put(cur.root, h('h1', { tabindex: '-1', text: cur.view.title(cur.route) }));
      else if ($('.view-error', cur.root)) $('.view-error', cur.root).remove();
      cur.root.prepend(box);
    }
    if (cur.focus && cur === current && $('h1', cur.root)) $('h1', cur.root).focus({ preventScroll: true });
    cur.focus = false;
  }

  // ---------------------------------------------------------------- router

  function parseRoute() {
    const m = /^#\/proposal\/([0-9a-fA-F]{64})$/.exec(location.hash);
    if (m) return { name: 'proposal', id: m[1].toLowerCase() };
    const name = { '#/proposals': 'proposals', '#/federation': 'federation', '#/peers': 'peers', '#/audit': 'audit' }[location.hash];
    return { name: name || 'overview' };
  }

  function route(initial) {
    const r = parseRoute();
    const view = VIEWS[r.name];
    const section = r.name === 'proposal' ? 'proposals' : r.name;
    for (const a of document.querySelectorAll('#nav a')) a.toggleAttribute('aria-current', a.dataset.route === section);
    for (const a of document.querySelectorAll('#nav a[aria-current]')) a.setAttribute('aria-current', 'page');
    setNav(false);
    const root = h('div', { class: 'view' }, h('p', { class: 'loading', text: 'Loading…' }));
    put($('#view'), root);
    current = { route: r, view, root, parts: null, focus: !initial, rendered: false };
    document.title = `${view.title(r)} · kOS`;
    if (!initial) window.scrollTo(0, 0);
    refresh();
  }

  function setNav(open) {
    $('#nav-toggle').setAttribute('aria-expanded', String(open));
    $('#nav').classList.toggle('open', open);
  }

  // ---------------------------------------------------------------- widgets

  const card = (title, id, ...body) => h('section', { class: 'card', 'aria-labelledby': id }, h('h2', { id, text: title }), ...body);
  const empty = (text) => h('p', { class: 'empty', text });
  const pageHead = (title, sub) => h('div', { class: 'page-head' }, h('h1', { tabindex: '-1', testid: 'view-title', text: title }), sub ? h('p', { class: 'muted', text: sub }) : null);

  /** A definition list from [label, value] pairs (null values skipped). */
  const dl = (pairs) => h('dl', { class: 'facts' }, pairs.filter((p) => p && p[1] != null).map(([k, v]) => [h('dt', { text: k }), h('dd', {}, v)]));

  /** A table whose rows stack into labelled cards on a phone. cols: [label, cell(row), class]. */
  function table(cols, rows, testid, caption) {
    return h('div', { class: 'table-wrap' }, h('table', { class: 'table', testid },
      caption ? h('caption', { class: 'sr-only', text: caption }) : null,
      h('thead', {}, h('tr', {}, cols.map(([label, , cls]) => h('th', { scope: 'col', class: cls, text: label })))),
      h('tbody', {}, rows.map((r) => h('tr', {}, cols.map(([label, cell, cls]) => h('td', { 'data-label': label, class: cls }, cell(r))))))));
  }

  /** A horizontal gauge: fills [{frac, cls}], markers [{at, cls, label}] drawn as lines across. */
  function gauge({ label, value, fills, markers = [], testid, alt, note }) {
    // Widths and positions through the CSSOM (the CSP forbids style attributes).
    const sized = (el, prop, frac) => { el.style[prop] = `${clamp01(frac) * 100}%`; return el; };
    const track = h('div', { class: 'track', role: 'img', 'aria-label': alt || `${label}: ${value}` },
      h('div', { class: 'fills' }, fills.map((f) => sized(h('div', { class: `fill ${f.cls}` }), 'width', f.frac))),
      markers.map((m) => sized(h('div', { class: `marker ${m.cls}`, title: m.label }), 'left', m.at)));
    return h('div', { class: 'gauge', testid },
      h('div', { class: 'gauge-head' }, h('span', { class: 'gauge-label', text: label }), h('span', { class: 'gauge-value', text: value })),
      track, markers.length || note ? h('p', { class: 'legend' }, markers.map((m) => h('span', { class: `key ${m.cls}`, text: m.label })), note) : null);
  }

  /** A gauge of part/whole with one marker line (the quorum, a threshold) at `at` (0..1). */
  const ratioGauge = (label, testid, part, whole, cls, value, at, mark, markCls = 'mark-threshold', note) => gauge({
    label, testid, value, note, fills: [{ frac: share(part, whole), cls }],
    markers: at != null ? [{ at, cls: markCls, label: mark }] : [],
  });

  /** The compact tally of a proposal in a list: one stacked bar (per choice, or the
   *  participation for option ballots) with the quorum line. */
  function miniTally(p) {
    const t = p.tally;
    const labels = choiceLabels(p, t.totals.length);
    const totals = labels.map((l, i) => `${l.name} ${number(t.totals[i])}`).join(' · ');
    const fills = isBinary(p.rule) ? labels.map((l, i) => ({ frac: share(t.totals[i], t.eligible), cls: l.cls })) : [{ frac: share(t.participation, t.eligible), cls: 'fill-part' }];
    const markers = t.quorum_weight != null ? [{ at: share(t.quorum_weight, t.eligible), cls: 'mark-quorum', label: `quorum ${number(t.quorum_weight)}` }] : [];
    return h('div', { class: 'mini' }, gauge({ label: totals, value: `${pct(share(t.participation, t.eligible))} voted`, fills, markers,
      alt: `${totals}; participation ${number(t.participation)} of ${number(t.eligible)}` }));
  }

  /** When a listed proposal's next step is due. */
  function deadline(p) {
    const at = { seeking_sponsors: p.discussion_end_ms, discussion: p.discussion_end_ms, voting: p.voting_end_ms, reveal: p.reveal_end_ms }[p.status];
    const what = { seeking_sponsors: 'Sponsors due', discussion: 'Voting opens', voting: 'Voting closes', reveal: 'Reveal closes' }[p.status];
    if (at != null) return h('span', {}, `${what} `, when(at));
    if (p.status === 'closed') return h('span', { text: 'Waiting for attestations' });
    return h('span', {}, 'Proposed ', when(p.created_ms));
  }

  function proposalRow(p, detail) {
    return h('li', { class: 'prow' },
      h('a', { class: 'prow-link', href: `#/proposal/${p.id}`, testid: 'proposal-link', 'data-id': p.id, 'data-key': `p:${p.id}` },
        h('span', { class: 'prow-title', text: p.title || '(untitled)' }),
        h('span', { class: 'prow-meta' }, statusBadge(p.status), h('span', { text: `${cap(p.kind)} · ${ruleInfo(p.rule).name} · by ${short(p.author)}` }))),
      h('p', { class: 'prow-when' }, deadline(p)),
      detail && detail.tally ? miniTally(detail) : null);
  }

  /** Details (with tallies) of the proposals whose tally is moving, at most 24. */
  async function activeDetails(list) {
    const ids = list.filter((p) => ACTIVE.has(p.status)).slice(0, 24).map((p) => p.id);
    const all = await Promise.all(ids.map((id) => get(`/v1/proposals/${id}`).catch(() => null)));
    return Object.fromEntries(all.filter(Boolean).map((d) => [d.id, d]));
  }

  function groupByPhase(list) {
    const order = Object.fromEntries(PHASES.map(([k], i) => [k, i]));
    const sorted = [...list].sort((a, b) => (order[a.status] ?? 99) - (order[b.status] ?? 99) || b.created_ms - a.created_ms);
    return sorted.reduce((groups, p) => groups.set(p.status, [...(groups.get(p.status) || []), p]), new Map());
  }

  /** The immune system's recent actions: the blocks in force, and the audit log's blocks,
   *  quarantines and refusals. */
  function immuneEvents(peers, audit) {
    const blocks = peers.blocks || [];
    return h('div', { class: 'immune', testid: 'immune' }, blocks.length ? table([['Blocked peer', (b) => ident(b.peer_id, 12, 6)], ['Reason', (b) => b.reason || '—'],
      ['Until', (b) => (b.until_ms ? when(b.until_ms, { dateFirst: true }) : 'unblocked by the operator')]], blocks, 'blocks-table', 'Blocked peers') : empty('No peer is blocked.'),
    h('h3', { class: 'subhead', text: 'Recent immune events' }),
    auditList((audit.entries || []).filter((e) => IMMUNE.test(e.event)).slice(-12).reverse(), 'immune-log', 'No block, quarantine or refusal in the recent audit log.'));
  }

  /** Audit entries, newest first as given; long ids shortened unless `full` (the audit page). */
  function auditList(entries, testid, none, full) {
    if (!entries.length) return empty(none);
    const text = (e) => (full ? e.event : e.event.replace(/\S{24,}/g, (w) => short(w, 8, 6)));
    return h('ol', { class: 'log', testid }, entries.map((e) => h('li', { class: IMMUNE.test(e.event) ? 'log-immune' : null },
      h('span', { class: 'log-index', text: `#${e.index}` }),
      h('span', { class: 'log-time' }, when(e.at_ms, { dateFirst: true, seconds: true })),
      h('span', { class: 'log-event', title: full ? null : e.event, text: text(e) }))));
  }

  // ---------------------------------------------------------------- views

  const overview = {
    title: () => 'Overview',
    async load() {
      const [status, fed, list, peers, audit] = await Promise.all([
        get('/v1/status'), getOrNull('/v1/federation'), getOrNull('/v1/proposals'), get('/v1/peers'), get('/v1/audit?last=200')]);
      const proposals = list ? list.proposals : [];
      return { status, fed, proposals, details: await activeDetails(proposals), peers, audit };
    },
    render(cur, d) {
      const s = d.status;
      const counts = {};
      for (const p of d.proposals) counts[p.status] = (counts[p.status] || 0) + 1;
      const open = d.proposals.filter((p) => ACTIVE.has(p.status) || p.status === 'discussion' || p.status === 'seeking_sponsors');
      const stat = (label, value, sub, href) => h(href ? 'a' : 'div', { class: 'stat', href },
        h('span', { class: 'stat-label', text: label }), h('span', { class: 'stat-value', text: String(value) }), sub ? h('span', { class: 'stat-sub', text: sub }) : null);
      put(cur.root,
        pageHead('Overview', d.fed ? `Federation ${d.fed.name || short(d.fed.federation)}` : 'This node follows no federation yet.'),
        h('div', { class: 'stats' },
          stat('Open votes', (counts.voting || 0) + (counts.reveal || 0), `${counts.discussion || 0} in discussion`, '#/proposals'),
          stat('Members', d.fed && d.fed.members ? d.fed.members.length : 0, d.fed ? `registry epoch ${d.fed.registry_epoch ?? '—'}` : null, '#/federation'),
          stat('Peers', (s.peers || []).length, `${(d.peers.blocks || []).length} blocked`, '#/peers'),
          stat('Messages', s.messages, s.pending ? `${s.pending} pending` : 'none pending', '#/audit')),
        h('div', { class: 'grid-2' },
          card('Open proposals', 'h-open', open.length
            ? h('ul', { class: 'plist' }, open.map((p) => proposalRow(p, d.details[p.id])))
            : empty('Nothing is open for discussion or voting.'),
          h('p', {}, h('a', { href: '#/proposals', text: 'All proposals' }))),
          h('div', { class: 'stack' },
            card('Immune system', 'h-immune', immuneEvents(d.peers, d.audit)),
            card('Audit log', 'h-audit', auditList((d.audit.entries || []).slice(-8).reverse(), 'audit-tail', 'The audit log is empty.'),
              h('p', {}, h('a', { href: '#/audit', text: 'Full audit log' }))))));
    },
  };

  const proposals = {
    title: () => 'Proposals',
    async load() {
      const all = ((await getOrNull('/v1/proposals')) || { proposals: [] }).proposals;
      return { all, details: await activeDetails(all) };
    },
    render(cur, d) {
      const groups = groupByPhase(d.all);
      put(cur.root, pageHead('Proposals', `${d.all.length} proposal${d.all.length === 1 ? '' : 's'}, grouped by phase; tallies update live.`),
        groups.size ? null : empty('No proposals yet: kosctl propose creates one.'),
        [...groups].map(([status, list]) => h('section', { class: 'phase', 'aria-labelledby': `ph-${status}` },
          h('h2', { id: `ph-${status}` }, statusBadge(status), h('span', { class: 'count', text: ` ${list.length}` })),
          h('ul', { class: 'plist' }, list.map((p) => proposalRow(p, d.details[p.id]))))));
    },
  };

  // ---- one proposal

  const proposal = {
    title: () => 'Proposal',
    load: (r) => get(`/v1/proposals/${r.id}`),
    render(cur, p) {
      if (!cur.parts) buildProposal(cur);
      const P = cur.parts;
      document.title = `${p.title} · kOS`;
      updateVotePanel(cur, p);
      // Everything but the two forms is redrawn from the data.
      const about = [h('h2', { id: 'h-about', text: 'Proposal' }), h('p', { class: 'prose', text: p.description || '(no description)' }),
        dl([['Action', actionLine(p.action)],
          (p.options || []).length ? ['Options', h('ol', { class: 'options', start: '0' }, p.options.map((o) => h('li', { text: o })))] : null,
          ['Sponsors', `${(p.sponsors || []).length} of ${p.sponsors_needed} needed`], p.withdrawn ? ['Withdrawn', ident(p.withdrawn, 10, 6)] : null])];
      for (const [el, kids] of [[P.head, proposalHead(p)], [P.tally, tallyBody(p)], [P.about, about], [P.thread, discussion(cur, p)],
        [P.revisions, revisions(p)], [P.timeline, timeline(p)], [P.rules, rules(p)]]) put(el, kids);
    },
  };

  function buildProposal(cur) {
    const sec = (id, testid) => h('section', { class: 'card', 'aria-labelledby': id, testid });
    const P = (cur.parts = { head: h('div', { class: 'phead' }), tally: sec('h-tally', 'tally'), vote: buildVotePanel(), about: sec('h-about'),
      thread: h('div'), comment: buildCommentForm(cur), revisions: sec('h-revisions', 'revisions'), timeline: sec('h-timeline', 'timeline'), rules: sec('h-rules') });
    put(cur.root, P.head, h('div', { class: 'pgrid' },
      h('div', { class: 'pmain' }, P.tally, P.vote.panel, P.about, h('section', { class: 'card', 'aria-labelledby': 'h-discussion' }, P.thread, P.comment.form), P.revisions),
      h('div', { class: 'pside' }, P.timeline, P.rules)));
  }

  function proposalHead(p) {
    const next = p.timeline.next || {};
    return [
      h('p', { class: 'crumbs' }, h('a', { href: '#/proposals', text: '← All proposals' })),
      h('h1', { tabindex: '-1', testid: 'proposal-title', text: p.title }),
      h('p', { class: 'badges' }, statusBadge(p.status), badge(cap(p.kind)), badge(`scope ${p.scope}`),
        badge(`revision ${p.revision}`), p.voting.secret ? badge('secret ballot', 'info') : null,
        p.secret_ballot ? badge(`${p.secret_ballot.committed} committed · ${p.secret_ballot.revealed} revealed`, 'info', 'secret-progress') : null),
      h('p', { class: 'next', testid: 'next-step' }, h('strong', { text: 'Next: ' }), next.event || '—',
        next.at_ms != null ? [' — ', when(next.at_ms, { dateFirst: true })] : null),
      h('p', { class: 'meta muted' }, 'By ', ident(p.author, 10, 6), p.author === me() ? ' (this node)' : '',
        ' · proposed ', when(p.created_ms), ' · id ', h('span', { class: 'mono wrap', text: p.id })),
    ];
  }

  function tallyBody(p) {
    const t = p.tally;
    const f = p.finality;
    const head = h('h2', { id: 'h-tally', text: 'Tally' });
    if (!t) return [head, empty(['discussion', 'seeking_sponsors'].includes(p.status) ? 'Voting has not opened yet: the tally appears when it does.' : 'No tally for this proposal.')];
    const labels = choiceLabels(p, t.totals.length);
    const binary = isBinary(p.rule);
    // One bar per choice, against the eligible weight; the option that wins is marked.
    const bars = labels.map((l, i) => {
      const total = t.totals[i] || 0;
      const g = gauge({ label: l.name, value: `${weight(total)} · ${pct(share(total, t.participation))}`, fills: [{ frac: share(total, t.eligible), cls: l.cls }] });
      if (!binary && t.winner === l.index) $('.gauge-label', g).append(' ', badge(f.final ? 'winner' : 'leading', 'good'));
      return h('div', { class: 'bar', testid: `bar-${l.key}`, 'data-total': String(total), 'data-label': l.name }, g);
    });
    const q = t.quorum_weight;
    const gauges = [ratioGauge('Participation', 'participation', t.participation, t.eligible, q == null || t.participation >= q ? 'fill-part' : 'fill-part-low',
      `${weight(t.participation)} of ${number(t.eligible)} eligible (${pct(share(t.participation, t.eligible))})`,
      q != null ? share(q, t.eligible) : null, `quorum ${weight(q)} — ${t.participation >= q ? 'met' : 'not met yet'}`, 'mark-quorum')];
    if (binary && t.totals.length === 4) {
      // Approval against the rule's threshold, and the veto share against the veto line.
      const [yes, no, , veto] = t.totals;
      const rule = ruleInfo(p.voting.rule);
      const vt = ratio(p.voting.veto);
      gauges.push(ratioGauge('Approval (yes of yes + no + veto)', 'approval', yes, yes + no + veto, 'fill-yes',
        yes + no + veto ? pct(share(yes, yes + no + veto)) : '—', rule.threshold, `threshold: ${rule.needs}`));
      gauges.push(ratioGauge('Veto (of participation)', 'veto', veto, t.participation, 'fill-veto',
        t.participation ? pct(share(veto, t.participation)) : '—', vt, `vetoed above ${pct(vt)}`));
    }
    if ((t.rounds || []).length > 1) {
      gauges.push(h('ul', { class: 'rounds', 'aria-label': 'Instant-runoff rounds' },
        t.rounds.map((r, i) => h('li', { text: `Round ${i + 1}: ${labels.map((l, j) => `${l.name} ${number(r[j])}`).join(' · ')}` }))));
    }
    gauges.push(ratioGauge(f.final ? 'Final' : 'Attestations toward final', 'finality', f.attested, f.eligible, f.final ? 'fill-good' : 'fill-attest',
      `${weight(f.attested)} attested of ${number(f.eligible)} eligible`, share(f.needed, f.eligible), `final at ${weight(f.needed)} (2/3)`,
      'mark-threshold', f.final && f.final_at_ms ? `final since ${date(f.final_at_ms)}` : null));
    return [head,
      h('p', { class: 'muted' }, `Revision ${t.revision} · ${t.counted} ballot${t.counted === 1 ? '' : 's'} counted · outcome `,
        badge(`${words(t.outcome)}${f.final ? '' : ' so far'}`, TONE[t.outcome] || 'info', 'outcome')),
      h('div', { class: 'bars' }, bars), gauges];
  }

  // The vote panel is built once per page; its ballot is rebuilt only when the status or the
  // ballot's shape changes, and the reason field never is.
  function buildVotePanel() {
    const V = {
      ballot: h('div', { class: 'ballot' }),
      reason: h('textarea', { id: 'vote-reason', testid: 'vote-reason', rows: '1', maxlength: '2000' }),
      reasonLabel: h('label', { for: 'vote-reason' }),
      result: h('p', { class: 'result', testid: 'vote-result', role: 'status', 'aria-live': 'polite' }),
    };
    V.reasonField = h('div', { class: 'field' }, V.reasonLabel, V.reason);
    V.panel = h('section', { class: 'card vote', 'aria-labelledby': 'h-vote', testid: 'vote-panel' },
      h('h2', { id: 'h-vote', text: 'Your vote' }), V.reasonField, V.ballot, V.result);
    return V;
  }

  function updateVotePanel(cur, p) {
    const V = cur.parts.vote;
    const key = [p.status, p.rule, (p.options || []).join('\u0000'), p.voting.secret, p.voting.reasoning].join('|');
    if (key === V.key) return;
    V.key = key;
    V.reasonLabel.textContent = `Reason (${p.voting.reasoning ? 'required by this proposal' : 'optional'}, published with the ballot)`;
    V.reasonField.hidden = p.status !== 'voting';
    if (p.status !== 'voting') {
      const why = { discussion: 'Voting has not opened yet.', seeking_sponsors: 'The proposal needs sponsors before voting opens.',
        reveal: 'Voting is over: committed ballots are being revealed.' }[p.status];
      return put(V.ballot, h('p', { class: 'muted', testid: 'vote-closed', text: why || 'Voting is closed.' }));
    }
    const send = (choice, label) => castVote(cur, p, choice, label);
    const secret = p.voting.secret ? h('p', { class: 'hint', text: 'Secret ballot: the vote is committed now and revealed by this node when voting ends.' }) : null;
    if (isBinary(p.rule)) {
      const rule = ruleInfo(p.voting.rule);
      return put(V.ballot, h('div', { class: 'choices', role: 'group', 'aria-label': 'Choice' },
        BINARY.map((c) => h('button', { type: 'button', class: `btn choice choice-${c}`, testid: `vote-${c}`, onclick: () => send(c, c) }, cap(c)))),
      h('p', { class: 'hint', text: `${rule.name}: ${rule.needs} of yes + no + veto; vetoed above ${pct(ratio(p.voting.veto) || 0)} of participation.` }), secret);
    }
    // Option ballots: checkboxes (approval) or a rank per option (instant runoff).
    const ranked = p.rule === 'instant_runoff';
    const inputs = p.options.map((name, i) => (ranked
      ? h('select', { id: `opt-${i}`, testid: `vote-rank-${i}` }, h('option', { value: '', text: 'not ranked' }),
        p.options.map((_, r) => h('option', { value: String(r + 1), text: `choice ${r + 1}` })))
      : h('input', { type: 'checkbox', id: `opt-${i}`, testid: `vote-option-${i}`, value: String(i) })));
    const submit = () => {
      const picked = ranked
        ? inputs.map((el, i) => [Number(el.value), i]).filter(([r]) => r > 0).sort((a, b) => a[0] - b[0])
        : inputs.filter((el) => el.checked).map((el) => [0, Number(el.value)]);
      if (!picked.length) return say(V, ranked ? 'Rank at least one option.' : 'Approve at least one option.', false);
      if (ranked && new Set(picked.map(([r]) => r)).size !== picked.length) return say(V, 'Two options have the same rank.', false);
      const idx = picked.map(([, i]) => i);
      return send(`${ranked ? 'rank' : 'approve'}:${idx.join(',')}`, idx.map((i) => p.options[i]).join(ranked ? ' > ' : ', '));
    };
    return put(V.ballot, h('fieldset', { class: 'options-ballot' },
      h('legend', { text: ranked ? 'Rank the options you support (choice 1 first)' : 'Approve any number of options' }),
      p.options.map((name, i) => h('div', { class: 'opt' }, ranked ? null : inputs[i], h('label', { for: `opt-${i}`, text: name }), ranked ? inputs[i] : null))),
    h('button', { type: 'button', class: 'btn btn-primary', testid: 'vote-submit', onclick: submit }, ranked ? 'Cast ranked ballot' : 'Cast approval ballot'), secret);
  }

  function say(box, text, ok) {
    box.result.textContent = text;
    box.result.className = `result ${ok ? 'result-ok' : 'result-error'}`;
  }

  /** Sends a ballot or a comment with its buttons disabled; refreshes the view when done. */
  async function post(box, buttons, path, body, sending, done, refused) {
    buttons.forEach((b) => { b.disabled = true; });
    say(box, sending, true);
    try {
      say(box, done(await api('POST', path, body)), true);
      refresh();
      return true;
    } catch (e) {
      if (session.token) say(box, `${refused}: ${e.message}`, false);
      return false;
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  async function castVote(cur, p, choice, label) {
    const V = cur.parts.vote;
    const reason = V.reason.value.trim();
    if (p.voting.reasoning && !reason) { V.reason.focus(); return say(V, 'This proposal requires a reason with every ballot.', false); }
    const ok = await post(V, [...V.ballot.querySelectorAll('button')], `/v1/proposals/${p.id}/vote`, { choice, reason: reason || undefined },
      'Sending your vote…', (r) => (r.committed ? `Ballot committed: ${label}. This node reveals it when voting ends.`
        : `Vote recorded: ${label} (message ${short(r.id, 10, 0)}).`), 'Vote refused');
    if (ok) V.reason.value = '';
    return ok;
  }

  // The comment form is built once per proposal page: a refresh never touches what is typed.
  function buildCommentForm(cur) {
    const C = { parent: null, replyText: h('span') };
    C.text = h('textarea', { id: 'comment-text', testid: 'comment-text', rows: '4', maxlength: '10000', required: true });
    C.kind = h('select', { id: 'comment-kind', testid: 'comment-kind' },
      ['comment', 'suggestion', 'objection', 'support', 'summary'].map((k) => h('option', { value: k, text: cap(k) })));
    C.reply = h('p', { class: 'replying', testid: 'comment-replying', hidden: true }, C.replyText,
      h('button', { type: 'button', class: 'btn btn-quiet', testid: 'comment-cancel-reply', onclick: () => setReply(C, null) }, 'Cancel reply'));
    C.result = h('p', { class: 'result', testid: 'comment-result', role: 'status', 'aria-live': 'polite' });
    C.submit = h('button', { type: 'submit', class: 'btn btn-primary', testid: 'comment-submit' }, 'Post comment');
    C.form = h('form', { class: 'comment-form', testid: 'comment-form', 'aria-labelledby': 'h-comment' },
      h('h3', { id: 'h-comment', text: 'Add to the discussion' }), C.reply,
      h('div', { class: 'form-row' },
        h('div', { class: 'field field-kind' }, h('label', { for: 'comment-kind', text: 'Kind' }), C.kind),
        h('div', { class: 'field field-grow' }, h('label', { for: 'comment-text', text: 'Comment' }), C.text)),
      C.submit, C.result);
    C.form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const text = C.text.value.trim();
      if (!text) { C.text.focus(); return; }
      const body = { text, kind: C.kind.value, parent: C.parent ? C.parent.id : undefined };
      if (await post(C, [C.submit], `/v1/proposals/${cur.route.id}/comment`, body, 'Posting…', () => 'Comment posted.', 'Comment refused')) {
        C.text.value = '';
        setReply(C, null);
      }
    });
    return C;
  }

  function setReply(C, comment) {
    C.parent = comment;
    C.reply.hidden = !comment;
    if (!comment) return;
    const gist = String(comment.text || '');
    C.replyText.textContent = `Replying to ${short(comment.author)}: “${gist.slice(0, 60)}${gist.length > 60 ? '…' : ''}”`;
    C.text.focus();
  }

  function discussion(cur, p) {
    const C = cur.parts.comment;
    const list = p.discussion || [];
    const head = h('h2', { id: 'h-discussion' }, 'Discussion', h('span', { class: 'count', text: ` ${p.comments_total || 0}` }));
    if (!list.length) return [head, empty('No comments yet.')];
    return [head, h('ol', { class: 'thread', testid: 'thread' }, list.map((c) => h('li', {
      class: `comment depth-${Math.min(c.depth || 0, 5)}`, testid: 'comment', 'data-id': c.id,
    },
    h('div', { class: 'comment-head' },
      c.depth ? h('span', { class: 'sr-only', text: 'Reply: ' }) : null,
      badge(cap(c.kind), { objection: 'bad', support: 'good', suggestion: 'info', summary: 'active' }[c.kind] || 'quiet'),
      ident(c.author), c.author === me() ? h('span', { class: 'muted', text: 'this node' }) : null,
      when(c.created_ms), c.revision !== p.revision ? h('span', { class: 'muted', text: `on revision ${c.revision}` }) : null),
    h('p', { class: 'comment-text prose', text: c.text == null ? '(text not in this node’s store)' : c.text }),
    h('button', { type: 'button', class: 'btn btn-quiet reply', 'data-key': `reply:${c.id}`,
      'aria-label': `Reply to the comment by ${short(c.author)}`, onclick: () => setReply(C, c) }, 'Reply')))),
    (p.comments_total || 0) > list.length ? h('p', { class: 'muted', text: `${p.comments_total - list.length} more not shown.` }) : null];
  }

  /** A line diff of two texts (LCS), as kosctl shows description changes. */
  function diffLines(a, b) {
    const x = String(a || '').split('\n'), y = String(b || '').split('\n');
    const n = x.length, m = y.length;
    const lcs = Array.from({ length: n + 1 }, () => new Array(m + 1).fill(0));
    for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    const out = [];
    let i = 0, j = 0;
    while (i < n || j < m) {
      if (i < n && j < m && x[i] === y[j]) { out.push([' ', x[i]]); i++; j++; }
      else if (i < n && (j === m || lcs[i + 1][j] >= lcs[i][j + 1])) out.push(['-', x[i++]]);
      else out.push(['+', y[j++]]);
    }
    return out;
  }

  function revisions(p) {
    const text = (v) => (Array.isArray(v) ? v.join(', ') : String(v ?? '—'));
    const list = p.revisions || [];
    return [h('h2', { id: 'h-revisions', text: 'Revision history' }), h('ol', { class: 'revs' }, list.map((r) => h('li', { class: 'rev', testid: 'revision' },
      h('div', { class: 'rev-head' }, h('strong', { text: `Revision ${r.revision}` }), r.in_force ? badge('in force', 'good') : null,
        r.created_ms ? when(r.created_ms, { dateFirst: true }) : null),
      h('p', { text: r.title }),
      (r.changes || []).length
        ? h('ul', { class: 'changes' }, r.changes.map((c) => h('li', { testid: 'change' }, h('span', { class: 'field-name', text: cap(c.field) }),
          c.field === 'description'
            ? h('pre', { class: 'diff' }, diffLines(c.from, c.to).map(([mark, l]) => h('span', { class: mark === '+' ? 'add' : mark === '-' ? 'del' : 'same' },
              h('span', { class: 'sr-only', text: mark === '+' ? 'added: ' : mark === '-' ? 'removed: ' : '' }), `${mark} ${l}\n`)))
            : h('span', { class: 'change' }, h('del', { text: text(c.from) }), ' → ', h('ins', { text: text(c.to) })))))
        : h('p', { class: 'muted', text: r.revision === 0 ? 'The original proposal.' : 'No visible change.' }))))];
  }

  function timeline(p) {
    const t = p.timeline, e = p.execution, now = Date.now(), next = t.next || {};
    const steps = [['Proposed', t.created_ms], ['Discussion ends, voting opens', t.discussion_end_ms], ['Voting closes', t.voting_end_ms],
      t.reveal_end_ms != null && ['Reveal window closes', t.reveal_end_ms], p.finality.final_at_ms != null && ['Final', p.finality.final_at_ms],
      e && [e.due ? `Executed${e.result === 'ok' ? '' : ` — failed: ${e.result}`}` : 'Executes', e.at_ms]].filter(Boolean).sort((a, b) => a[1] - b[1]);
    const upcoming = steps.find(([, at]) => at > now);
    return [h('h2', { id: 'h-timeline', text: 'Timeline' }),
      h('p', { class: 'next-box' }, h('span', { class: 'next-label', text: 'What comes next' }), h('strong', { text: cap(next.event || '—') }),
        next.at_ms != null ? when(next.at_ms, { dateFirst: true }) : null),
      h('ol', { class: 'steps' }, steps.map((s) => h('li', { class: s === upcoming ? 'step next' : s[1] <= now ? 'step done' : 'step' },
        h('span', { class: 'step-label', text: s[0] }), when(s[1], { dateFirst: true }))))];
  }

  function rules(p) {
    const v = p.voting;
    return [h('h2', { id: 'h-rules', text: 'Voting rules' }), dl([
      ['Rule', `${ruleInfo(v.rule).name}${isBinary(v.rule) ? ` — ${ruleInfo(v.rule).needs}` : ''}`], ['Weighting', cap(v.weighting)],
      ['Quorum', `${pct(ratio(v.quorum) || 0)} of the eligible weight`], ['Veto', `above ${pct(ratio(v.veto) || 0)} of participation`],
      ['Ballot', v.secret ? 'secret (commit, then reveal)' : 'public'], ['Early close', v.early_close ? 'yes, once the outcome cannot change' : 'no'],
      ['Reason', v.reasoning ? 'required with every ballot' : 'optional']])];
  }

  // ---- federation, peers, audit

  const federation = {
    title: () => 'Federation',
    load: () => getOrNull('/v1/federation'),
    render(cur, f) {
      if (!f) { put(cur.root, pageHead('Federation'), empty('This node follows no federation yet.')); return; }
      const tw = (m) => TRUST_WEIGHT[m.trust] ?? 0;
      const members = [...(f.members || [])].sort((a, b) => tw(b) - tw(a));
      const total = members.reduce((sum, m) => sum + tw(m), 0);
      const t = f.timing || {};
      const config = Object.entries(f.config || {});
      const vc = (c) => `${ruleInfo(c.rule).name}, ${words(c.weighting)} weighting, quorum ${pct(ratio(c.quorum) || 0)}${c.secret ? ', secret' : ''}`;
      put(cur.root,
        pageHead(`Federation ${f.name || ''}`.trim(), `${members.length} members · ${weight(total)} of trust weight · registry epoch ${f.registry_epoch ?? '—'}`),
        card('Members', 'h-members', table([
          ['Member', (m) => h('span', {}, ident(m.did, 10, 6), m.did === me() ? h('span', { class: 'muted', text: ' (this node)' }) : null)],
          ['Trust', (m) => badge(m.trust, { core: 'good', trusted: 'info', quarantine: 'bad' }[m.trust] || 'quiet')],
          ['Trust weight', (m) => `${weight(tw(m))} (${pct(share(tw(m), total))})`, 'num'],
          ['Stake', (m) => String(m.stake ?? 0), 'num'],
          ['Roles', (m) => h('span', { class: 'chips' }, (m.roles || []).map((r) => h('span', { class: 'chip', text: words(r) })))],
          ['Key', (m) => (m.revoked ? badge('revoked', 'bad') : m.key !== m.did ? h('span', {}, `rotated (generation ${m.key_generation}) `, ident(m.key)) : 'original')],
        ], members, 'members-table', 'Members')),
        h('div', { class: 'grid-2' },
          card('Charter', 'h-charter', dl([
            ['Federation id', h('span', { class: 'mono wrap', text: f.federation })],
            ['Charter synced', f.synced ? 'yes' : 'not yet'],
            ['Minimum protocol', f.min_protocol_version != null ? `version ${f.min_protocol_version}` : null],
            ['Delegation chains', f.max_delegation_depth != null ? `at most ${f.max_delegation_depth} steps` : null],
            ['Discussion', t.min_discussion_ms != null ? `at least ${duration(t.min_discussion_ms)}` : null],
            ['Voting', t.default_voting_ms != null ? `${duration(t.default_voting_ms)} by default, at most ${duration(t.max_voting_ms)}` : null],
            ['Reveal window', t.reveal_ms != null ? duration(t.reveal_ms) : null],
            ['Governing bodies', (f.bodies || []).length ? h('ul', { class: 'plain' }, f.bodies.map((b) => h('li', {}, `${cap(b.kind)}: `, b.members.map((m) => ident(m))))) : 'none'],
          ])),
          card('Configuration in force', 'h-config', config.length
            ? table([['Key', ([k]) => h('span', { class: 'mono', text: k })],
              ['Value', ([, v]) => h('span', { class: 'mono wrap', text: typeof v === 'string' ? v : JSON.stringify(v) })]], config, 'config-table', 'Configuration')
            : empty('No configuration key has been set.'))),
          card('Voting rules by proposal type', 'h-voting', (f.voting || []).length ? table([
            ['Type', (c) => cap(c.kind)],
            ['Rules', (c) => vc(c)],
            ['Veto above', (c) => pct(ratio(c.veto) || 0), 'num'],
            ['Sponsors', (c) => String(c.sponsors ?? 0), 'num'],
            ['Proposer', (c) => `${words(c.proposer_trust)}${c.kind === 'emergency_action' ? ' or Security Board' : ''}`],
            ['May override', (c) => ((c.overrides || []).length ? c.overrides.map(words).join(', ') : '—')],
            ['From', (c) => (c.source === 'charter' ? badge('charter', 'info') : badge('built in', 'quiet'))],
          ], f.voting, 'voting-table', 'Voting rules') : empty('The charter has not arrived yet.')));
    },
  };

  const peersView = {
    title: () => 'Peers',
    async load() {
      const [peers, audit, status] = await Promise.all([get('/v1/peers'), get('/v1/audit?last=300'), get('/v1/status')]);
      return { peers, audit, status };
    },
    render(cur, { peers: p, audit: log, status: s }) {
      const trust = Object.fromEntries((p.trust || []).map((t) => [t.target, t.level]));
      const score = Object.fromEntries((p.scores || []).map((x) => [x.peer_id, x.score]));
      const known = Object.fromEntries((p.known || []).map((k) => [k.peer_id, k.addrs || []]));
      const blocked = new Set((p.blocks || []).map((b) => b.peer_id));
      const connected = new Set(p.connected || []);
      // Connected peers first, then those known by address or blocked.
      const ids = [...new Set([...connected, ...Object.keys(known), ...blocked])];
      put(cur.root,
        pageHead('Peers', `${connected.size} connected · ${blocked.size} blocked`),
        card('Peers', 'h-peers', ids.length ? table([
          ['Peer', (id) => ident(id, 12, 6)],
          ['State', (id) => (blocked.has(id) ? badge('blocked', 'bad') : connected.has(id) ? badge('connected', 'good') : badge('known'))],
          ['Gossip score', (id) => (score[id] != null ? String(Math.round(score[id] * 10) / 10) : '—'), 'num'],
          ['Local trust', (id) => (trust[`peer://${id}`] ? badge(trust[`peer://${id}`], 'info') : 'default')],
          ['Addresses', (id) => h('span', { class: 'mono wrap', text: (known[id] || []).join(' ') || '—' })],
        ], ids, 'peers-table', 'Peers') : empty('No peer is connected or known.')),
        card('Immune system', 'h-immune', h('p', { class: 'muted', text: 'Blocked peers, and the audit log’s recent blocks, quarantines and refusals.' }), immuneEvents(p, log)),
        h('div', { class: 'grid-2' },
          card('Local trust', 'h-trust', (p.trust || []).length
            ? table([['Target', (t) => ident(t.target, 16, 6)], ['Level', (t) => badge(t.level, 'info')]], p.trust, 'trust-table', 'Local trust')
            : empty('No local trust set: kosctl trust sets it.'),
          h('h3', { class: 'subhead', text: 'Advisory reputation (never changes trust by itself)' }),
          (p.reputation || []).length
            ? table([['Subject', (r) => ident(r.subject)], ['Score', (r) => String(r.advisory_score), 'num'],
              ['Reports', (r) => String((r.sources || []).length), 'num']], p.reputation, 'reputation-table', 'Reputation')
            : empty('No reputation reports received.')),
          card('This node', 'h-self', dl([
            ['Member', s.member ? ident(s.member, 10, 6) : '—'],
            ['Peer id', h('span', { class: 'mono wrap', text: s.peer_id })],
            ['State hash', s.state_hash ? ident(s.state_hash, 10, 6) : 'no federation'],
            ['Sync', `${s.sync ? s.sync.peers : 0} peers, ${s.sync ? s.sync.requests_in_flight : 0} requests in flight`],
            ['Listening', (s.listen || []).length ? h('span', { class: 'mono wrap', text: s.listen.join(' ') }) : 'nowhere'],
          ]))));
    },
  };

  const audit = {
    title: () => 'Audit log',
    load: () => get('/v1/audit?last=500'),
    render(cur, d) {
      // The filter is built once: refreshes redraw the list under it, never the inputs.
      if (!cur.parts) {
        const redraw = () => audit.render(cur, cur.data);
        const P = (cur.parts = { list: h('div'), count: h('p', { class: 'muted', role: 'status' }),
          filter: h('input', { id: 'audit-filter', type: 'search', testid: 'audit-filter', autocomplete: 'off', oninput: redraw }),
          immune: h('input', { id: 'audit-immune', type: 'checkbox', testid: 'audit-immune', onchange: redraw }) });
        put(cur.root, pageHead('Audit log', 'The node’s append-only, hash-chained log: the last 500 entries, newest first.'),
          h('div', { class: 'card filters' }, h('div', { class: 'field field-grow' }, h('label', { for: 'audit-filter', text: 'Filter' }), P.filter),
            h('div', { class: 'check' }, P.immune, h('label', { for: 'audit-immune', text: 'Immune system only' }))), P.count, P.list);
      }
      cur.data = d;
      const q = cur.parts.filter.value.trim().toLowerCase();
      const entries = (d.entries || []).filter((e) => (!q || e.event.toLowerCase().includes(q)) && (!cur.parts.immune.checked || IMMUNE.test(e.event))).reverse();
      cur.parts.count.textContent = `${entries.length} of ${(d.entries || []).length} entries`;
      put(cur.parts.list, h('div', { class: 'card' }, auditList(entries, 'audit-list', 'No entry matches.', true)));
    },
  };

  const VIEWS = { overview, proposals, proposal, federation, peers: peersView, audit };

  // ---------------------------------------------------------------- start

  function start() {
    $('#login-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      openSession({ token: $('#login-token').value.trim() }).then(() => { $('#login-token').value = ''; enterApp(true); }, (e) => showLogin(e.message));
    });
    $('#signout').addEventListener('click', async () => {
      await api('DELETE', '/v1/session').catch(() => null);
      signedOut('Signed out.', true);
    });
    $('#nav-toggle').addEventListener('click', () => setNav($('#nav-toggle').getAttribute('aria-expanded') !== 'true'));
    // The skip link moves focus without touching the hash (the hash is the route).
    $('#skip').addEventListener('click', (ev) => { ev.preventDefault(); $('#main').focus(); });
    const code = () => new URLSearchParams(location.hash.slice(1)).get('code');
    window.addEventListener('hashchange', () => (code() ? signInWithCode(code()) : session.token && route(false)));
    if (code()) signInWithCode(code());
    else if (session.token) enterApp();
    else showLogin();
  }

  start();
}());
