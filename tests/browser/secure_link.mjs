// Open a Sealgate secure link in headless Chromium (Debian's, no browser download) the way a
// recipient would: load the page, ask for the one-time code, read the code from the carrier
// simulator's SMS inbox, enter it, read the decrypted text, then load the link again and see
// it refused. Prints one JSON line with what it saw; exits non-zero on any failure.
//
// usage: node secure_link.mjs LINK_URL SIM_URL PHONE EXPECTED_TEXT
import { chromium } from 'playwright-core';

const [url, simUrl, phone, expected] = process.argv.slice(2);
if (!url || !simUrl || !phone) {
  console.error('usage: node secure_link.mjs LINK_URL SIM_URL PHONE [EXPECTED_TEXT]');
  process.exit(2);
}
const executablePath = process.env.SEALGATE_CHROMIUM || '/usr/bin/chromium';

async function inbox() {
  const resp = await fetch(`${simUrl}/control/inbox/${encodeURIComponent(phone)}`);
  return (await resp.json()).messages || [];
}

async function waitForCode(before) {
  const deadline = Date.now() + 20000;
  while (Date.now() < deadline) {
    const messages = await inbox();
    for (const m of messages.slice(before).reverse()) {
      const match = /code to open the secure message: (\d{6})/.exec(m.text || '');
      if (match) return match[1];
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('no one-time code arrived in the SMS inbox');
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const external = [];
try {
  const context = await browser.newContext();
  const origin = new URL(url).origin;
  context.on('request', (r) => { if (!r.url().startsWith(origin)) external.push(r.url()); });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  const first = await page.goto(url);
  if (first.status() !== 200) throw new Error(`viewer answered ${first.status()}`);
  await page.waitForSelector('#request-code', { state: 'visible' });
  const before = (await inbox()).length;
  await page.click('#request-code');
  await page.waitForSelector('#code', { state: 'visible' });
  const code = await waitForCode(before);
  await page.fill('#code', code);
  await page.click('#open');
  await page.waitForSelector('#message', { state: 'visible', timeout: 10000 });
  const decrypted = await page.textContent('#message');
  const addressAfter = page.url();
  if (expected && decrypted !== expected) throw new Error(`decrypted ${JSON.stringify(decrypted)}`);

  // A second open (the same full link, fresh page): refused, with a clear message.
  const again = await context.newPage();
  const second = await again.goto(url);
  const state = await again.getAttribute('body', 'data-state');
  const status = await again.textContent('#status');
  await again.waitForFunction(() => document.getElementById('status').textContent.includes('already opened'));
  const secondStatus = await again.textContent('#status');
  if (second.status() !== 410 || state !== 'used') {
    throw new Error(`second open: HTTP ${second.status()}, state ${state}, "${status}"`);
  }
  if (errors.length) throw new Error(`page errors: ${errors.join('; ')}`);
  if (external.length) throw new Error(`requests outside the gateway: ${external.join(', ')}`);
  console.log(JSON.stringify({
    decrypted,
    second_open: state,
    second_status: secondStatus,
    key_left_in_address: addressAfter.includes('#k='),
  }));
} finally {
  await browser.close();
}
