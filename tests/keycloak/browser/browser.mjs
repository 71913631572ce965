// Headless Chromium driver for the Keycloak tests (playwright-core + Debian's chromium).
//   node browser.mjs login   '{"url","username","password","callback_prefix"}'            [--state FILE]
//   node browser.mjs consent '{"url","kc_username","kc_password","idp_username","idp_password","callback_prefix"}' [--state FILE]
//   node browser.mjs device  '{"url","username","password","approve"}' [--state FILE]
//     a device login's verification URL: log in, then Yes (approve) or No on the grant page, up to
//     Keycloak's /device/status page; prints {"url", "outcome": "approved"|"denied", ...}.
// The JSON may be given as "-" (or left out) to read it from stdin, which keeps passwords out of ps.
// --state FILE: Playwright storageState, loaded if it exists and saved at the end, so the
// Keycloak/IdP browser sessions survive between invocations.
// Prints one JSON line: {"url", "pages", "elapsed_ms"} on success, {"error", "url", "pages"} (exit 2)
// when the flow ends on an error page, exit 3 on the hard timeout. Never prints cookies or tokens.
import { existsSync, readFileSync, chmodSync } from 'node:fs';
import { chromium } from 'playwright-core';

const started = Date.now();
const TIMEOUT_MS = Number(process.env.BROWSER_TIMEOUT_MS || 60000);
const out = (obj) => process.stdout.write(`${JSON.stringify({ ...obj, elapsed_ms: Date.now() - started })}\n`);
const die = (code, obj) => { out(obj); process.exit(code); };

const argv = process.argv.slice(2);
let stateFile;
const si = argv.indexOf('--state');
if (si >= 0) { stateFile = argv[si + 1]; argv.splice(si, 2); }
const [command, rawArgs] = argv;
if (!['login', 'consent', 'device'].includes(command)) die(64, { error: `usage: browser.mjs login|consent|device [json|-] [--state FILE] (got ${command})` });
const args = JSON.parse(rawArgs && rawArgs !== '-' ? rawArgs : readFileSync(0, 'utf8'));
for (const k of command === 'device' ? ['url'] : ['url', 'callback_prefix']) if (!args[k]) die(64, { error: `missing argument ${k}` });
const kc = command === 'consent' ? { user: args.kc_username, pass: args.kc_password } : { user: args.username, pass: args.password };
const idp = { user: args.idp_username ?? (command === 'device' ? args.username : undefined),
  pass: args.idp_password ?? (command === 'device' ? args.password : undefined) };

// Hard limit for the whole invocation; Playwright kills the browser it launched when we exit.
setTimeout(() => die(3, { error: `timeout after ${TIMEOUT_MS} ms`, url: safeUrl(currentUrl), pages }), TIMEOUT_MS);

const pages = []; // titles + URLs without query/fragment (those can carry codes)
let currentUrl = args.url;
const safeUrl = (u) => { try { const x = new URL(u); return `${x.origin}${x.pathname}`; } catch { return String(u); } };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
    '--no-first-run', '--disable-component-update', '--disable-sync'],
});
const context = await browser.newContext(stateFile && existsSync(stateFile) ? { storageState: stateFile } : {});
context.setDefaultTimeout(15000);
const page = await context.newPage();

// The callback (e.g. http://127.0.0.1:9/callback) has no server: note the first request to it
// (also when it is the target of a redirect) and answer it ourselves with a tiny page.
let callbackUrl = null;
const isCallback = (u) => Boolean(args.callback_prefix) && u.startsWith(args.callback_prefix);
context.on('request', (r) => { if (!callbackUrl && isCallback(r.url())) callbackUrl = r.url(); });
await context.route((u) => isCallback(u.href), (route) => {
  callbackUrl ??= route.request().url();
  return route.fulfill({ status: 200, contentType: 'text/html', body: '<title>callback</title>callback reached' });
});
let loads = 0;
page.on('load', () => { loads += 1; });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function settle(before) { // wait until the page loaded again (or the callback was hit)
  for (let i = 0; i < 150 && !callbackUrl && loads === before; i += 1) await sleep(100);
  await page.waitForLoadState('domcontentloaded').catch(() => {});
}
const visible = async (sel) => (await page.locator(sel).count()) > 0 && page.locator(sel).first().isVisible();
async function errorText() {
  const sel = '#kc-error-message, #input-error, .alert-error, .pf-m-danger .pf-v5-c-alert__title, .pf-m-error, #error';
  const texts = await page.locator(sel).allInnerTexts().catch(() => []);
  return [...new Set(texts.map((t) => t.trim()).filter(Boolean))].join(' | ');
}

async function saveState() {
  if (!stateFile) return;
  await context.storageState({ path: stateFile });
  chmodSync(stateFile, 0o600);
}

async function fail(msg) {
  await saveState().catch(() => {});
  die(2, { error: msg, url: safeUrl(page.url()), pages });
}

await page.goto(args.url, { waitUntil: 'domcontentloaded' }).catch((e) => { if (!callbackUrl) throw e; });
const seen = new Map(); // page signature -> times acted on it (stops loops, e.g. a bad password)
for (let step = 0; step < 25 && !callbackUrl; step += 1) {
  currentUrl = page.url();
  const title = await page.title().catch(() => '');
  pages.push({ title, url: safeUrl(currentUrl) });
  const sig = `${safeUrl(currentUrl)}|${title}`;
  seen.set(sig, (seen.get(sig) || 0) + 1);
  if (seen.get(sig) > 2) await fail(`stuck on "${title}": ${await errorText() || 'no visible error'}`);
  const before = loads;
  if (command === 'device' && new URL(currentUrl).pathname.endsWith('/device/status')) {
    // Keycloak's end of a device login: "Device Login Successful", or ?error=access_denied|…
    const error = new URL(currentUrl).searchParams.get('error');
    await saveState();
    if (!error && /Successful/.test(title + await page.locator('#kc-page-title').innerText().catch(() => ''))) {
      await browser.close();
      out({ url: safeUrl(currentUrl), outcome: 'approved', pages });
      process.exit(0);
    }
    if (error === 'access_denied' && args.approve === false) {
      await browser.close();
      out({ url: safeUrl(currentUrl), outcome: 'denied', pages });
      process.exit(0);
    }
    await fail(`device login failed: ${error || title}`);
  }
  if (command === 'device' && await visible('#device-done')) { // oidc-provider's end of a device login
    await saveState();
    await browser.close();
    out({ url: safeUrl(currentUrl), outcome: 'approved', pages });
    process.exit(0);
  }
  const err = await errorText();
  if (command === 'device' && await visible('#device-confirm')) { // oidc-provider: "Confirm device"
    await page.click(args.approve === false ? '#device-abort' : '#device-confirm');
  } else if (command === 'device' && await visible('[name="user_code"]') && await visible('#device-continue')) {
    if (!args.user_code) await fail(`${title}: the provider asks for the user code but none was given`);
    await page.fill('[name="user_code"]', args.user_code);
    await page.click('#device-continue');
  } else if (command === 'device' && args.approve === false && await visible('#kc-cancel')) {
    await page.click('#kc-cancel'); // "Do you grant these access privileges?" No
  } else if (await visible('#device_user_code')) { // the code page, when the URL lacks the code
    if (!args.user_code) await fail(`${title}: Keycloak asks for the user code but none was given`);
    await page.fill('#device_user_code', args.user_code);
    await page.click('#kc-login');
  } else if (await visible('#username') && await visible('#password') && await visible('#kc-login')) {
    // Keycloak login form (a re-rendered one with an error means the password was wrong).
    if (err) await fail(`${title}: ${err}`);
    if (!kc.user) await fail(`${title}: Keycloak login requested but no Keycloak credentials given`);
    await page.fill('#username', kc.user);
    await page.fill('#password', kc.pass);
    await page.click('#kc-login');
  } else if (await visible('#login') && await visible('#signin')) { // IdP login
    if (err) await fail(`${title}: ${err}`);
    if (!idp.user) await fail(`${title}: IdP login requested but no IdP credentials given`);
    await page.fill('#login', idp.user);
    await page.fill('#password', idp.pass);
    await page.click('#signin');
  } else if (await visible('#accept')) { // IdP consent
    await page.click('#accept');
  } else if (await visible('[name="accept"]#kc-login, button[name="accept"]')) { // Keycloak OAuth consent
    await page.locator('[name="accept"]#kc-login, button[name="accept"]').first().click();
  } else if (await visible('#kc-continue')) {
    // required-action confirmation, e.g. AIA kc_action=idp_link:ALIAS "Do you want to link your account?"
    await page.click('#kc-continue');
  } else if (await visible('button[name="submitAction"][value="linkAccount"]')) {
    // first-broker-login "Account already exists": link to the existing account
    await page.click('button[name="submitAction"][value="linkAccount"]');
  } else if (await visible('#kc-idp-review-profile-form, #kc-update-profile-form')) { // review profile
    await page.locator('#kc-idp-review-profile-form [type="submit"], #kc-update-profile-form [type="submit"]').first().click();
  } else if (err) {
    await fail(`${title}: ${err}`);
  } else if (await visible('#kc-info-message a')) { // Keycloak info page with "back to application"
    await page.click('#kc-info-message a');
  } else {
    const text = (await page.locator('body').innerText().catch(() => '')).trim().slice(0, 300);
    await fail(`unexpected page "${title}": ${text}`);
  }
  await settle(before);
}
if (!callbackUrl) await fail(command === 'device' ? 'too many steps without reaching /device/status' : 'too many steps without reaching the callback');
await saveState();
// Keycloak reports failures on the callback itself: error=..., link_error=... (legacy
// /broker/ALIAS/link, e.g. not_logged_in) or kc_action_status=error|cancelled (AIA).
const q = new URL(callbackUrl).searchParams;
const cbErr = ['error', 'link_error'].filter((k) => q.has(k)).map((k) => `${k}=${q.get(k)}`)
  .concat(q.has('kc_action_status') && q.get('kc_action_status') !== 'success' ? [`kc_action_status=${q.get('kc_action_status')}`] : []);
if (cbErr.length) die(2, { error: `callback reported ${cbErr.join(' ')}`, url: callbackUrl, pages });
await browser.close();
out({ url: callbackUrl, pages });
process.exit(0);
