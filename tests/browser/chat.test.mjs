// The chat page (services/edge/web) in a real headless Chromium — Debian's
// /usr/bin/chromium driven by playwright-core — against a running edge.
//
//   node chat.test.mjs http://127.0.0.1:<edge port>/
//
// Env: DW_SCREENSHOT  where to write the desktop screenshot (default
//                     build/browser-chat.png); a phone-sized one is written
//                     beside it as <name>-phone.png.
//      DW_CHROMIUM    the browser (default /usr/bin/chromium).
//      DW_BROWSER_FRAMES=1  also print the WebSocket frames on success.
// Exit code 0 when every check passed, 1 otherwise.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const base = process.argv[2];
if (!base || !/^https?:\/\//.test(base)) {
  console.error('usage: node chat.test.mjs http://127.0.0.1:<port>/');
  process.exit(2);
}
const shot = process.env.DW_SCREENSHOT || path.join(here, '..', '..', 'build', 'browser-chat.png');
const phoneShot = shot.replace(/(\.png)?$/, '-phone.png');
const executablePath = process.env.DW_CHROMIUM || '/usr/bin/chromium';
const ROOM = 'it-room';
const STEP_MS = 15000;
// Texts carry a per-run tag, so a rerun against the same server is not confused.
const RUN = Date.now().toString(36);

let passed = 0;
let failed = 0;
function ok(what) {
  passed++;
  console.log('ok - ' + what);
}

// Every browser-side problem is a test failure: uncaught exceptions and
// console errors (a 404 for a page file shows up as one too).
const problems = [];
// The last WebSocket frames each tab saw, printed when a check fails.
const frames = [];
// How often each client message id went out: a page resends a message only
// after a drop while it was in flight, which this test never causes.
const sends = new Map();
function watch(page, who) {
  page.on('websocket', (ws) => {
    const note = (dir, f) => {
      frames.push(`${who} ${dir} ${typeof f.payload === 'string' ? f.payload : '<binary>'}`.slice(0, 400));
      if (frames.length > 120) frames.shift();
    };
    ws.on('framesent', (f) => {
      note('>>', f);
      try {
        const m = JSON.parse(f.payload);
        if (m.action === 'sendmessage') sends.set(m.id, (sends.get(m.id) || 0) + 1);
      } catch (e) { /* not JSON: the edge will say so */ }
    });
    ws.on('framereceived', (f) => note('<<', f));
    ws.on('close', () => note('--', { payload: 'closed' }));
  });
  page.on('pageerror', (e) => problems.push(`${who}: uncaught ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`${who}: console error: ${m.text()}`);
  });
  page.on('requestfailed', (r) => {
    // A socket the page drops on purpose, or one the test cuts, is fine.
    if (!r.url().startsWith('ws')) problems.push(`${who}: request failed ${r.url()}`);
  });
  page.on('request', (r) => {
    const u = new URL(r.url());
    if (u.host !== new URL(base).host && u.protocol !== 'data:')
      problems.push(`${who}: external request ${r.url()}`);
  });
}

// A switch between the page and the edge: every WebSocket of the page goes
// through it (to the real edge), and cut() drops them all and refuses new
// ones until mend(), as a phone losing its network would see it.
function netSwitch() {
  const live = new Set();
  let down = false;
  return {
    async install(page) {
      await page.routeWebSocket(() => true, (ws) => {
        if (down) {
          ws.close({ code: 4001, reason: 'test: network down' });
          return;
        }
        const link = { ws, server: ws.connectToServer() };
        live.add(link);
        ws.onClose(() => live.delete(link));
      });
    },
    async cut() {
      down = true;
      // Both ends: closing only the page's end leaves the real socket open.
      const why = { code: 4001, reason: 'test: network down' };
      await Promise.all([...live].map(async ({ ws, server }) => {
        await server.close(why);
        await ws.close(why);
      }));
      live.clear();
    },
    mend() {
      down = false;
    },
  };
}

async function open(ctx, name, viewport, net) {
  const page = await ctx.newPage();
  await page.setViewportSize(viewport);
  watch(page, name);
  if (net) await net.install(page);
  await page.goto(new URL(`?name=${name}#${ROOM}`, base).href);
  await page.locator('#status[data-state="connected"]').waitFor({ timeout: STEP_MS });
  return page;
}

// The page shows message `text` sent by `from`; returns its seq.
async function seesMessage(page, from, text) {
  const li = page.locator('#messages li.msg[data-seq]', {
    has: page.locator('.text', { hasText: text }),
  }).filter({ has: page.locator('.from', { hasText: from }) });
  await li.first().waitFor({ timeout: STEP_MS });
  const n = await li.count();
  if (n !== 1) throw new Error(`"${text}" shown ${n} times`);
  const exact = await li.locator('.text').textContent();
  if (exact !== text) throw new Error(`shown as ${JSON.stringify(exact)}, sent ${JSON.stringify(text)}`);
  return Number(await li.getAttribute('data-seq'));
}

// The presence list shows exactly these users, each with one connection.
async function presenceIs(page, users) {
  const want = [...users].sort().join(',');
  await page.waitForFunction(
    (w) => [...document.querySelectorAll('#presence li')]
      .map((li) => li.dataset.user + (li.querySelector('.conns') ? '*' : '')).sort().join(',') === w,
    want, { timeout: STEP_MS });
}

async function main() {
  if (!fs.existsSync(executablePath)) throw new Error(`${executablePath} not found`);
  fs.mkdirSync(path.dirname(shot), { recursive: true });
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'dw-chromium-'));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 60000,
  });
  try {
    const net = netSwitch();
    const alice = await open(ctx, 'alice', { width: 1000, height: 680 }, net);
    const bob = await open(ctx, 'bob', { width: 390, height: 740 });
    ok('both tabs connected and joined #' + ROOM);

    await presenceIs(alice, ['alice', 'bob']);
    await presenceIs(bob, ['alice', 'bob']);
    ok('presence shows alice and bob on both tabs');

    // Markup in a message is text, never HTML.
    const hello = `hello bob <b>not bold</b> & <img src=x onerror=alert(1)> ${RUN}`;
    await alice.fill('#text', hello);
    await alice.press('#text', 'Enter');
    const tick = alice.locator('#messages li.msg.own[data-state="delivered"]', { hasText: hello }).locator('.tick');
    await tick.waitFor({ timeout: STEP_MS });
    const aliceSeq = await seesMessage(alice, 'alice', hello);
    const tickSeq = Number(await tick.getAttribute('data-seq'));
    if (!(aliceSeq > 0) || tickSeq !== aliceSeq)
      throw new Error(`tick seq ${tickSeq}, message seq ${aliceSeq}`);
    ok(`alice's message got its delivery tick (seq ${aliceSeq})`);

    const bobSeq = await seesMessage(bob, 'alice', hello);
    if (bobSeq !== aliceSeq) throw new Error(`bob sees seq ${bobSeq}, alice's ack said ${aliceSeq}`);
    for (const p of [alice, bob]) {
      const tags = await p.locator('#messages b, #messages img').count();
      if (tags) throw new Error('message text was rendered as HTML');
    }
    ok('bob sees alice\'s message once, same seq, as plain text');

    await bob.fill('#text', `hi alice ${RUN}`);
    await bob.click('#send');
    await bob.locator('#messages li.msg.own[data-state="delivered"]', { hasText: `hi alice ${RUN}` })
      .waitFor({ timeout: STEP_MS });
    const replySeq = await seesMessage(alice, 'bob', `hi alice ${RUN}`);
    if (!(replySeq > aliceSeq)) throw new Error(`reply seq ${replySeq} not after ${aliceSeq}`);
    ok('alice sees bob\'s reply, after hers');

    // A burst typed while earlier acks and messages are still coming back:
    // each is sent once (checked on the wire at the end) and shown once.
    const burst = Array.from({ length: 20 }, (_, i) => `burst ${i + 1} ${RUN}`);
    for (const text of burst) {
      await bob.fill('#text', text);
      await bob.press('#text', 'Enter');
    }
    await bob.waitForFunction((n) => document.querySelectorAll(
      '#messages li.msg.own[data-state="delivered"]').length >= n, burst.length + 1, { timeout: STEP_MS });
    let last = replySeq;
    for (const text of burst) {
      const seq = await seesMessage(alice, 'bob', text);
      if (!(seq > last)) throw new Error(`"${text}" has seq ${seq}, not after ${last}`);
      last = seq;
    }
    ok(`a burst of ${burst.length}: each delivered once, in order`);

    // Alice's network drops: the page says it is reconnecting; what bob sends
    // meanwhile arrives once it is back (join with `since`), in order, once;
    // what alice typed while away is sent then and gets its tick.
    await net.cut();
    await alice.locator('#status[data-state="reconnecting"]').waitFor({ timeout: STEP_MS });
    const shown = await alice.locator('#status').textContent();
    if (!/reconnecting/i.test(shown)) throw new Error(`status while down: ${JSON.stringify(shown)}`);
    await presenceIs(bob, ['bob']);   // the edge saw her go: the drop is real
    ok(`alice's tab shows the drop: "${shown}"; bob sees her leave`);
    const away = [1, 2, 3].map((i) => `while away ${i} ${RUN}`);
    for (const text of away) {
      await bob.fill('#text', text);
      await bob.press('#text', 'Enter');
    }
    await bob.locator('#messages li.msg.own[data-state="delivered"]', { hasText: away[2] })
      .waitFor({ timeout: STEP_MS });
    await alice.fill('#text', `typed offline ${RUN}`);
    await alice.press('#text', 'Enter');
    await alice.locator('#messages li.msg.own[data-state="pending"]', { hasText: `typed offline ${RUN}` })
      .waitFor({ timeout: STEP_MS });
    net.mend();
    await alice.locator('#status[data-state="connected"]').waitFor({ timeout: 30000 });
    const awaySeqs = [];
    for (const text of away) awaySeqs.push(await seesMessage(alice, 'bob', text));
    if (!(awaySeqs[0] > last && awaySeqs[0] < awaySeqs[1] && awaySeqs[1] < awaySeqs[2]))
      throw new Error(`resumed seqs out of order: ${last}, ${awaySeqs}`);
    const order = await alice.$$eval('#messages li.msg[data-seq]', (lis) => lis.map((li) => Number(li.dataset.seq)));
    if (order.some((v, i) => i && v <= order[i - 1])) throw new Error(`messages not in seq order: ${order}`);
    await alice.locator('#messages li.msg.own[data-state="delivered"]', { hasText: `typed offline ${RUN}` })
      .waitFor({ timeout: STEP_MS });
    await seesMessage(bob, 'alice', `typed offline ${RUN}`);
    await presenceIs(alice, ['alice', 'bob']);
    ok(`alice resumed with since: bob's ${away.length} messages once, in order; her queued message delivered`);

    // A fresh page load shows the room's history (the history action).
    await bob.reload();
    await bob.locator('#status[data-state="connected"]').waitFor({ timeout: STEP_MS });
    await seesMessage(bob, 'alice', hello);
    await seesMessage(bob, 'bob', `hi alice ${RUN}`);
    ok('after a reload bob sees the history, each message once');

    await presenceIs(alice, ['alice', 'bob']);
    await alice.locator('#messages li.msg.own[data-state="delivered"]').first().waitFor({ timeout: STEP_MS });
    await alice.screenshot({ path: shot });
    await bob.screenshot({ path: phoneShot });
    ok(`screenshots ${shot} and ${phoneShot}`);

    await bob.close();
    await presenceIs(alice, ['alice']);
    ok('bob left: presence on alice\'s tab shows only alice');

    const resent = [...sends].filter(([, n]) => n !== 1);
    if (resent.length) throw new Error(`messages sent more than once: ${JSON.stringify(resent)}`);
    ok(`each of the ${sends.size} messages went out once`);

    if (problems.length) throw new Error('browser problems:\n  ' + problems.join('\n  '));
  } finally {
    await ctx.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

try {
  await main();
} catch (e) {
  failed++;
  console.log('not ok - ' + (e && e.stack ? e.stack : e));
  console.log('last WebSocket frames (tab, >> sent / << received):\n  ' + frames.join('\n  '));
}
if (process.env.DW_BROWSER_FRAMES && !failed) console.log('WebSocket frames:\n  ' + frames.join('\n  '));
console.log(`browser: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
