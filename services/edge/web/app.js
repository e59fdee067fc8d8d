/* DynamoWave chat page: a client of the dynamowave.v1 protocol
 * (docs/protocol.md). No framework, no build step, no external resources.
 *
 * Every piece of text that comes from a user or from the server is put into
 * the page with textContent, never as HTML.
 *
 * Delivery model: a message typed here is shown at once as "pending"; it
 * becomes "delivered" (a tick with its sequence number) when the server says
 * it is stored — the ack, or the message itself coming back (live, replayed
 * or in a history page). After a drop the page rejoins with `since` = the
 * last sequence it saw, so the server replays exactly what was missed; only
 * then are still-unconfirmed messages sent again, with the same client id.
 */
'use strict';

(function () {
  const PROTOCOL = 'dynamowave.v1';
  const NAME_RE = /^[A-Za-z0-9_.-]{1,64}$/;
  /* A '.' may not start, end or repeat (protocol.md, "Room names"). */
  const ROOM_RE = /^(?!\.)(?!.*\.\.)(?!.*\.$)[A-Za-z0-9_.-]{1,64}$/;
  const DEFAULT_ROOM = 'lobby';
  const HISTORY_PAGE = 50;
  const PRESENCE_PAGE = 100;
  const MAX_SHOWN = 1000;          /* older messages are dropped from the page */
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const ERROR_SHOWN_MS = 15000;
  const PRESENCE_SETTLE_MS = 5000; /* trust a join/leave event over a lagging list */
  const PRESENCE_RETRIES = 5;      /* re-reads of a list that disagrees with events */
  const PRESENCE_POLL_MS = 60000;  /* re-read now and then: events are best effort */
  const MAX_TRIES = 3;             /* drops while a message is the oldest in flight */
  const CLOSE_CODES = {
    1001: 'server going away',
    1003: 'unsupported data',
    1008: 'policy violation',
    1009: 'message too large',
    1011: 'server error',
    1012: 'server restarting',
    1013: 'try again later',
  };

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $('status'),
    joinForm: $('join-form'),
    name: $('name'),
    room: $('room'),
    errors: $('errors'),
    roomTitle: $('room-title'),
    older: $('older'),
    messages: $('messages'),
    sendForm: $('send-form'),
    text: $('text'),
    send: $('send'),
    presence: $('presence'),
    peopleCount: $('people-count'),
  };

  const st = {
    name: '',            /* the name asked for ('' = anonymous) */
    user: null,          /* the user the server says we are (hello) */
    room: null,          /* the room this page shows */
    ws: null,            /* the current socket; frames from older ones are ignored */
    wanted: false,       /* keep a connection up (reconnect after drops) */
    attempt: 0,          /* reconnect attempts since the last successful join */
    retryTimer: 0,
    joined: false,
    synced: false,       /* joined, replay and first history page are in */
    joinSince: null,     /* the `since` the current join was sent with */
    replayUntil: 0,      /* replayed messages up to this seq are still coming */
    historyWaiting: false,
    loaded: false,       /* the room's history was shown in this page */
    refs: 0,
    requests: new Map(), /* ref -> {action, room} */
    bySeq: new Map(),    /* seq -> <li> of messages shown */
    pending: new Map(),  /* client id -> {li, data, sent} not yet confirmed */
    oldest: null,        /* lowest seq shown */
    presence: new Map(), /* user -> connections */
    presencePage: null,  /* Map being filled by a paged presence answer */
    presenceTimer: 0,
    recentEvents: new Map(), /* user -> {type, at} of join/leave events just seen */
    presenceRetries: 0,
    idPrefix: 'c-' + randomId(8) + '-',
    idCount: 0,
  };

  /* ---- small helpers ---------------------------------------------------- */

  function randomId(n) {
    const abc = 'abcdefghijklmnopqrstuvwxyz0123456789';
    const bytes = new Uint8Array(n);
    crypto.getRandomValues(bytes);
    let s = '';
    for (const b of bytes) s += abc[b % abc.length];
    return s;
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  /* sessionStorage can be unavailable (privacy modes): the page then simply
   * forgets across reloads. */
  function loadSince(room) {
    try {
      const v = sessionStorage.getItem('dw.since.' + room);
      if (v === null) return null;
      const n = Number(v);
      return Number.isSafeInteger(n) && n >= 0 ? n : null;
    } catch (e) {
      return null;
    }
  }

  function saveSince(room, seq, force) {
    if (!Number.isSafeInteger(seq)) return;
    const cur = loadSince(room);
    if (!force && cur !== null && cur >= seq) return;
    try {
      sessionStorage.setItem('dw.since.' + room, String(seq));
    } catch (e) { /* see loadSince */ }
  }

  function setStatus(state, text) {
    ui.status.dataset.state = state;
    ui.status.textContent = text;
  }

  function showError(text) {
    /* The same error again (each retry of a refused message, say) is one line. */
    const last = ui.errors.lastElementChild;
    if (last && last.textContent === text) last.remove();
    const p = el('p', 'error', text);
    ui.errors.appendChild(p);
    while (ui.errors.childElementCount > 3) ui.errors.firstElementChild.remove();
    setTimeout(() => p.remove(), ERROR_SHOWN_MS);
  }

  function describeError(m) {
    const code = typeof m.code === 'string' ? m.code : 'error';
    const text = typeof m.message === 'string' && m.message ? m.message : 'no details';
    let s = 'Server error (' + code + '): ' + text;
    if (code === 'rate_limited' && Number.isFinite(m.retry_after_ms))
      s += ' — try again in ' + Math.ceil(m.retry_after_ms / 1000) + ' s';
    return s;
  }

  function dataText(data) {
    if (typeof data === 'string') return data;
    try {
      return JSON.stringify(data);
    } catch (e) {
      return String(data);
    }
  }

  function fmtTime(ts) {
    const d = new Date(ts);
    if (!Number.isFinite(d.getTime())) return null;
    return d;
  }

  /* ---- the connection --------------------------------------------------- */

  function wsUrl(name) {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return scheme + '//' + location.host + '/' + (name ? '?name=' + encodeURIComponent(name) : '');
  }

  function connect() {
    clearTimeout(st.retryTimer);
    st.retryTimer = 0;
    st.joined = false;
    st.synced = false;
    st.requests.clear();
    setStatus(st.attempt ? 'reconnecting' : 'connecting',
              st.attempt ? 'Reconnecting…' : 'Connecting…');
    let ws;
    try {
      ws = new WebSocket(wsUrl(st.name), [PROTOCOL]);
    } catch (e) {
      showError('Cannot open a WebSocket: ' + e.message);
      scheduleReconnect(null);
      return;
    }
    st.ws = ws;
    ws.onopen = () => {
      if (ws !== st.ws) return;
      if (ws.protocol !== PROTOCOL) {
        showError('The server does not speak ' + PROTOCOL + '.');
        ws.close(1002, 'protocol');
        return;
      }
      sendJoin();
    };
    ws.onmessage = (ev) => {
      if (ws !== st.ws) return;
      if (typeof ev.data !== 'string') {
        showError('The server sent a binary frame; ignored.');
        return;
      }
      let m;
      try {
        m = JSON.parse(ev.data);
      } catch (e) {
        showError('The server sent something that is not JSON; ignored.');
        return;
      }
      if (m && typeof m === 'object') onFrame(m);
    };
    ws.onclose = (ev) => {
      if (ws !== st.ws) return;
      st.ws = null;
      scheduleReconnect(ev);
    };
  }

  /* Closes the current socket on purpose: its close event is not a drop. */
  function disconnect() {
    const ws = st.ws;
    st.ws = null;
    st.joined = false;
    st.synced = false;
    clearTimeout(st.retryTimer);
    st.retryTimer = 0;
    if (ws) ws.close(1000, 'bye');
  }

  function scheduleReconnect(ev) {
    st.joined = false;
    st.synced = false;
    onDropPending();
    updateComposer();
    if (!st.wanted) {
      setStatus('idle', 'Not connected');
      return;
    }
    /* Exponential backoff with jitter, so that a restarted edge is not hit
     * by every page at the same instant. */
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, st.attempt));
    const delay = Math.round(base / 2 + Math.random() * base / 2);
    st.attempt++;
    let why = 'Connection lost';
    if (ev && ev.code && ev.code !== 1006) {
      const known = CLOSE_CODES[ev.code];
      why += ' (' + ev.code + (ev.reason ? ': ' + ev.reason : known ? ': ' + known : '') + ')';
      if (ev.code === 1009) showError('The server closed the connection: a message was too large.');
    }
    setStatus('reconnecting', why + ' — reconnecting in ' + Math.max(1, Math.round(delay / 1000)) + ' s…');
    st.retryTimer = setTimeout(connect, delay);
  }

  function send(obj) {
    if (!st.ws || st.ws.readyState !== WebSocket.OPEN) return false;
    st.ws.send(JSON.stringify(obj));
    return true;
  }

  function request(action, fields) {
    const ref = ++st.refs;
    st.requests.set(ref, { action, room: fields.room });
    return send(Object.assign({ action }, fields, { ref }));
  }

  /* ---- rooms ------------------------------------------------------------ */

  function sendJoin() {
    const since = loadSince(st.room);
    st.joinSince = since;
    const fields = { room: st.room };
    if (since !== null) fields.since = since;
    setStatus(st.attempt ? 'reconnecting' : 'connecting', 'Joining #' + st.room + '…');
    request('join', fields);
  }

  function onJoined(m) {
    st.joined = true;
    st.synced = false;
    st.attempt = 0;
    const since = st.joinSince;
    const seq = Number.isSafeInteger(m.seq) ? m.seq : 0;
    /* A `since` beyond the room's last seq means the stream was reset (a new
     * deployment, say): what we remember no longer exists. */
    const lost = since !== null && (m.recovered === false || since > seq);
    if (lost) {
      /* The history window no longer covers what we missed: start over from
       * the newest history page. */
      clearMessages();
      notice('Some messages were missed while away; showing the latest ones.');
    }
    if (since !== null && !lost && seq > since) {
      st.replayUntil = seq;   /* messages since+1..seq follow */
    } else {
      st.replayUntil = 0;
      saveSince(st.room, seq, lost);
    }
    if (!st.loaded || lost) {
      st.loaded = true;
      st.historyWaiting = true;
      ui.messages.setAttribute('aria-busy', 'true');
      request('history', { room: st.room, limit: HISTORY_PAGE });
    }
    requestPresence();
    setStatus('connected', 'Connected as ' + (st.user || st.name || 'anonymous') + ' in #' + st.room);
    updateComposer();
    maybeSynced();
  }

  /* Once the replay and the first history page are in, what we sent before
   * the drop is either shown with a seq (stored) or was lost: send it again. */
  function maybeSynced() {
    if (st.synced || !st.joined || st.replayUntil || st.historyWaiting) return;
    st.synced = true;
    for (const [id, p] of st.pending) {
      if (p.li.dataset.seq) {
        st.pending.delete(id);
        markDelivered(p.li, Number(p.li.dataset.seq));
      } else if (!p.sent) {
        transmit(id, p);
      }
    }
  }

  function switchRoom(room) {
    if (st.joined && st.room && st.room !== room) request('leave', { room: st.room });
    st.room = room;
    resetRoomView();
    document.title = '#' + room + ' — DynamoWave chat';
    ui.roomTitle.textContent = '#' + room;
    if (st.ws && st.ws.readyState === WebSocket.OPEN) sendJoin();
  }

  function resetRoomView() {
    st.joined = false;
    st.synced = false;
    st.loaded = false;
    st.replayUntil = 0;
    st.historyWaiting = false;
    st.pending.clear();
    st.presence.clear();
    st.presencePage = null;
    st.recentEvents.clear();
    clearMessages();
    renderPresence();
    updateComposer();
  }

  /* ---- messages --------------------------------------------------------- */

  function clearMessages() {
    /* Unconfirmed messages of ours stay on screen: they will be resent. */
    for (const li of Array.from(ui.messages.children)) {
      if (!(li.dataset.id && st.pending.has(li.dataset.id) && !li.dataset.seq)) li.remove();
    }
    st.bySeq.clear();
    st.oldest = null;
    ui.older.hidden = true;
  }

  /* Sort key of a list item: its seq; a notice sorts after the seq that was
   * newest when it was shown; unsequenced (pending) messages go last. */
  function sortKey(li) {
    if (li.dataset.seq) return Number(li.dataset.seq);
    if (li.dataset.after) return Number(li.dataset.after) + 0.5;
    return Infinity;
  }

  function placeBySeq(li, seq) {
    let node = ui.messages.lastElementChild;
    while (node && (node === li || sortKey(node) > seq)) node = node.previousElementSibling;
    if (node) node.after(li);
    else ui.messages.prepend(li);
  }

  function newestSeq() {
    let max = 0;
    for (const s of st.bySeq.keys()) if (s > max) max = s;
    return max;
  }

  function buildMessage(li, m, own) {
    li.replaceChildren();
    li.className = 'msg' + (own ? ' own' : '');
    const head = el('div', 'meta');
    head.appendChild(el('span', 'from', typeof m.from === 'string' ? m.from : '?'));
    const d = fmtTime(m.ts);
    if (d) {
      const t = el('time', 'ts', d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }));
      t.dateTime = d.toISOString();
      t.title = d.toLocaleString();
      head.appendChild(t);
    }
    li.appendChild(head);
    li.appendChild(el('p', 'text', dataText(m.data)));
    if (own) {
      const tick = el('span', 'tick');
      li.appendChild(tick);
    }
  }

  function setTick(li, state, label, glyph) {
    li.dataset.state = state;
    const tick = li.querySelector('.tick');
    if (!tick) return;
    tick.textContent = glyph;
    tick.title = label;
    tick.setAttribute('role', 'img');
    tick.setAttribute('aria-label', label);
  }

  function markPending(li, sent) {
    setTick(li, 'pending', sent ? 'sending' : 'waiting for the connection', '…');
  }

  function markDelivered(li, seq) {
    if (Number.isSafeInteger(seq)) {
      li.dataset.seq = String(seq);
      st.bySeq.set(seq, li);
      placeBySeq(li, seq);
      if (st.oldest === null || seq < st.oldest) st.oldest = seq;
    }
    setTick(li, 'delivered', 'delivered, #' + li.dataset.seq, '✓');
    const n = li.querySelector('.tick');
    if (n) n.dataset.seq = li.dataset.seq || '';
  }

  function markFailed(li, why) {
    setTick(li, 'failed', 'not sent: ' + why, '✗');
    if (li.querySelector('.retry')) return;
    const text = li.querySelector('.text').textContent;
    const b = el('button', 'retry', 'Retry');
    b.type = 'button';
    b.setAttribute('aria-label', 'Send again: ' + text);
    b.addEventListener('click', () => {
      li.remove();
      sendText(text);
    });
    li.appendChild(b);
  }

  /* Shows a message from the server (live, replayed or history). */
  function addMessage(m) {
    const seq = m.seq;
    if (!Number.isSafeInteger(seq) || st.bySeq.has(seq)) return;
    const id = typeof m.id === 'string' ? m.id : null;
    const mine = id !== null && st.pending.has(id);
    let li;
    if (mine) {
      li = st.pending.get(id).li;
      /* The message came back, so it is stored; the ack may still follow. */
      buildMessage(li, m, true);
      markDelivered(li, seq);
      st.pending.delete(id);
    } else {
      li = el('li');
      const own = st.user !== null && m.from === st.user;
      buildMessage(li, m, own);
      if (id) li.dataset.id = id;
      li.dataset.seq = String(seq);
      st.bySeq.set(seq, li);
      if (own) markDelivered(li, seq);
      placeBySeq(li, seq);
      if (st.oldest === null || seq < st.oldest) st.oldest = seq;
    }
    trim();
  }

  function trim() {
    while (st.bySeq.size > MAX_SHOWN) {
      const first = ui.messages.firstElementChild;
      if (!first) break;
      if (first.dataset.seq) st.bySeq.delete(Number(first.dataset.seq));
      first.remove();
      ui.older.hidden = false;
    }
    st.oldest = null;
    for (const s of st.bySeq.keys()) if (st.oldest === null || s < st.oldest) st.oldest = s;
  }

  function notice(text) {
    const li = el('li', 'notice', text);
    li.dataset.after = String(newestSeq());
    ui.messages.appendChild(li);
    placeBySeq(li, newestSeq() + 0.5);
  }

  function scrollToEnd() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function nearEnd() {
    const m = ui.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
  }

  /* ---- sending ---------------------------------------------------------- */

  function sendText(text) {
    const id = st.idPrefix + (++st.idCount);
    const li = el('li');
    li.dataset.id = id;
    buildMessage(li, { from: st.user || st.name || 'you', data: text, ts: Date.now() }, true);
    ui.messages.appendChild(li);
    const p = { li, data: text, sent: false, strikes: 0 };
    st.pending.set(id, p);
    markPending(li, false);
    scrollToEnd();
    if (st.synced) transmit(id, p);
  }

  function transmit(id, p) {
    /* ref = the client id, so that an error about it finds the message. */
    p.sent = send({ action: 'sendmessage', room: st.room, data: p.data, id, ref: id });
    markPending(p.li, p.sent);
  }

  /* After a drop. The server handles a connection's frames in order, so the
   * oldest unconfirmed message sent is the likeliest cause of a close (one
   * over the size limit, say): it gets a strike, and after MAX_TRIES it is
   * given up rather than resent forever. The others simply wait. */
  function onDropPending() {
    let first = true;
    for (const [id, p] of st.pending) {
      if (!p.sent) continue;
      p.sent = false;
      if (first) {
        first = false;
        if (++p.strikes >= MAX_TRIES) {
          st.pending.delete(id);
          markFailed(p.li, 'the connection dropped ' + MAX_TRIES + ' times while sending it');
          continue;
        }
      }
      markPending(p.li, false);
    }
  }

  function onAck(m) {
    const id = typeof m.id === 'string' ? m.id : null;
    if (id === null || !st.pending.has(id)) return;
    const p = st.pending.get(id);
    st.pending.delete(id);
    if (Number.isSafeInteger(m.seq) && st.bySeq.has(m.seq) && st.bySeq.get(m.seq) !== p.li) {
      /* Shown already (the message overtook its ack): keep one copy. */
      p.li.remove();
      markDelivered(st.bySeq.get(m.seq), m.seq);
      return;
    }
    markDelivered(p.li, m.seq);
  }

  function updateComposer() {
    /* Typing stays possible while reconnecting: messages wait as pending. */
    const on = st.room !== null && st.wanted;
    ui.text.disabled = !on;
    ui.send.disabled = !on;
  }

  /* ---- presence --------------------------------------------------------- */

  function requestPresence(after) {
    if (!after) st.presencePage = new Map();
    const fields = { room: st.room, limit: PRESENCE_PAGE };
    if (after) fields.after = after;
    request('presence', fields);
  }

  /* Events are best effort; the presence list is the authority, so re-read
   * it shortly after any change (coalescing bursts). */
  function refreshPresenceSoon(delay) {
    clearTimeout(st.presenceTimer);
    st.presenceTimer = setTimeout(() => {
      if (st.joined) requestPresence();
    }, delay || 300);
  }

  function onPresence(m) {
    if (!Array.isArray(m.users)) return;
    const page = st.presencePage || new Map();
    let last = null;
    for (const u of m.users) {
      if (!u || typeof u.user !== 'string') continue;
      page.set(u.user, Number.isSafeInteger(u.connections) ? u.connections : 1);
      last = u.user;
    }
    if (m.more === true && last !== null) {
      st.presencePage = page;
      requestPresence(last);
      return;
    }
    st.presencePage = null;
    /* The list can lag behind an event that just came (the member's join is
     * not visible to the query yet): keep what the event said, for a while,
     * and ask again until both agree. */
    const now = Date.now();
    let disagree = false;
    if (st.joined && st.user !== null && !page.has(st.user)) {
      page.set(st.user, 1);   /* we are in: `joined` said so */
      disagree = true;
    }
    for (const [user, ev] of st.recentEvents) {
      if (now - ev.at > PRESENCE_SETTLE_MS) {
        st.recentEvents.delete(user);
      } else if (ev.type === 'join' && !page.has(user)) {
        page.set(user, 1);
        disagree = true;
      } else if (ev.type === 'leave' && page.has(user) && user !== st.user) {
        page.delete(user);
        disagree = true;
      }
    }
    st.presence = page;
    renderPresence();
    if (!disagree) st.presenceRetries = 0;
    else if (st.presenceRetries++ < PRESENCE_RETRIES) refreshPresenceSoon(1000);
  }

  function onPresenceEvent(m) {
    if (typeof m.user !== 'string') return;
    /* Our own comings and goings (another tab, a reconnect) are no news. */
    const self = m.user === st.user;
    st.recentEvents.set(m.user, { type: m.type, at: Date.now() });
    if (m.type === 'join') {
      if (!st.presence.has(m.user)) st.presence.set(m.user, 1);
      if (!self) notice(m.user + ' joined');
    } else {
      if (!self) st.presence.delete(m.user);
      if (!self) notice(m.user + ' left');
    }
    renderPresence();
    refreshPresenceSoon();
  }

  function renderPresence() {
    const users = Array.from(st.presence.keys()).sort();
    ui.presence.replaceChildren();
    for (const u of users) {
      const li = el('li', u === st.user ? 'me' : '');
      li.dataset.user = u;
      li.appendChild(el('span', 'user', u));
      const n = st.presence.get(u);
      if (n > 1) li.appendChild(el('span', 'conns', '×' + n));
      if (u === st.user) li.appendChild(el('span', 'you', '(you)'));
      ui.presence.appendChild(li);
    }
    ui.peopleCount.textContent = users.length ? '(' + users.length + ')' : '';
  }

  /* ---- frames from the server ------------------------------------------ */

  function onFrame(m) {
    const req = m.ref !== undefined ? st.requests.get(m.ref) : undefined;
    if (req) st.requests.delete(m.ref);
    /* Answers about another room are left over from before a room switch. */
    if (typeof m.room === 'string' && m.room !== st.room && m.type !== 'error') return;
    const follow = nearEnd();
    switch (m.type) {
      case 'hello':
        if (typeof m.user === 'string') st.user = m.user;
        break;
      case 'joined':
        onJoined(m);
        break;
      case 'left':
        break;
      case 'message':
        addMessage(m);
        if (st.replayUntil && m.seq >= st.replayUntil) st.replayUntil = 0;
        /* Replay and live traffic come in order with no gap, so every
         * message seen moves the resume point. */
        saveSince(st.room, m.seq);
        maybeSynced();
        break;
      case 'ack':
        onAck(m);
        break;
      case 'history':
        if (Array.isArray(m.messages)) {
          ui.messages.setAttribute('aria-busy', 'true');
          for (const msg of m.messages) if (msg && typeof msg === 'object') addMessage(msg);
          const first = m.messages.length ? m.messages[0].seq : null;
          if (first === null || st.oldest === null || first <= st.oldest) ui.older.hidden = m.more !== true;
        }
        ui.messages.removeAttribute('aria-busy');
        if (st.historyWaiting) {
          st.historyWaiting = false;
          scrollToEnd();
          maybeSynced();
        }
        break;
      case 'presence':
        onPresence(m);
        break;
      case 'join':
      case 'leave':
        onPresenceEvent(m);
        break;
      case 'error':
        onError(m, req);
        break;
      default:
        break; /* newer servers may send more: ignore what we do not know */
    }
    if (follow) scrollToEnd();
  }

  function onError(m, req) {
    if (m.code === 'unavailable' && typeof m.ref === 'string' && st.pending.has(m.ref)) {
      /* The bus could not take it now: send it again, with the same id, so
       * that if it was stored after all the server keeps one copy. */
      const id = m.ref;
      const p = st.pending.get(id);
      if (++p.strikes < MAX_TRIES) {
        p.sent = false;
        markPending(p.li, false);
        setTimeout(() => {
          if (st.pending.get(id) === p && !p.sent && st.synced) transmit(id, p);
        }, 500 * 2 ** (p.strikes - 1));
        return;
      }
    }
    showError(describeError(m));
    if (typeof m.ref === 'string' && st.pending.has(m.ref)) {
      const p = st.pending.get(m.ref);
      st.pending.delete(m.ref);
      markFailed(p.li, typeof m.code === 'string' ? m.code : 'error');
      return;
    }
    if (req && req.action === 'join') {
      setStatus('error', 'Could not join #' + req.room);
    } else if (req && req.action === 'history') {
      ui.messages.removeAttribute('aria-busy');
      if (st.historyWaiting) {
        st.historyWaiting = false;
        maybeSynced();
      }
    }
  }

  /* ---- the forms -------------------------------------------------------- */

  function validate(input, ok, what) {
    input.setCustomValidity(ok ? '' : what);
    input.setAttribute('aria-invalid', ok ? 'false' : 'true');
    if (!ok) showError(what);
    return ok;
  }

  function start(name, room) {
    const nameChanged = name !== st.name || !st.wanted;
    st.wanted = true;
    const url = (name ? '?name=' + encodeURIComponent(name) : location.pathname) + '#' + room;
    history.replaceState(null, '', url);
    if (nameChanged) {
      disconnect();
      st.name = name;
      st.user = null;
      st.attempt = 0;
      switchRoom(room);
      connect();
    } else if (room !== st.room) {
      switchRoom(room);
    }
    updateComposer();
    ui.text.focus();
  }

  ui.joinForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const name = ui.name.value.trim();
    const room = ui.room.value.trim() || DEFAULT_ROOM;
    if (!validate(ui.name, name === '' || NAME_RE.test(name),
                  'The name may only have letters, digits, "-", "_" and "." (at most 64).')) return;
    if (!validate(ui.room, ROOM_RE.test(room),
                  'The room may only have letters, digits, "-", "_" and "." (at most 64, no leading, trailing or double ".").')) return;
    start(name, room);
  });

  ui.sendForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = ui.text.value;
    if (!text.trim() || !st.room) return;
    ui.text.value = '';
    sendText(text);
  });

  ui.older.addEventListener('click', () => {
    if (!st.joined || st.oldest === null) return;
    request('history', { room: st.room, before: st.oldest, limit: HISTORY_PAGE });
  });

  window.addEventListener('hashchange', () => {
    const room = roomFromUrl();
    if (room && room !== st.room && ROOM_RE.test(room)) {
      ui.room.value = room;
      if (st.wanted) start(st.name, room);
    }
  });

  setInterval(() => {
    if (st.joined && document.visibilityState === 'visible') requestPresence();
  }, PRESENCE_POLL_MS);

  /* Back online: do not wait out the backoff. */
  window.addEventListener('online', () => {
    if (st.wanted && !st.ws) connect();
  });

  function roomFromUrl() {
    let h = location.hash.replace(/^#/, '');
    try {
      h = decodeURIComponent(h);
    } catch (e) { /* keep it raw */ }
    return h || new URLSearchParams(location.search).get('room') || '';
  }

  /* ---- start ------------------------------------------------------------ */

  const q = new URLSearchParams(location.search);
  const urlName = q.get('name') || '';
  const urlRoom = roomFromUrl();
  ui.name.value = urlName;
  ui.room.value = urlRoom || DEFAULT_ROOM;
  renderPresence();
  updateComposer();
  if (urlRoom) {
    /* The URL names a room: join it straight away. */
    ui.joinForm.requestSubmit();
  } else {
    setStatus('idle', 'Pick a name and a room, then Join');
    ui.name.focus();
  }
})();
