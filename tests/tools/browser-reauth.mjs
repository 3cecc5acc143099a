#!/usr/bin/env node
// Drives Debian's Chromium (headless, through playwright-core) through tokend's reauthorization
// flow the way a user would: open the link, read the connect page, press Reconnect, sign in and
// consent on oidc-provider's own pages (unless the provider consents at once), and land on the
// final page (tokend's result page, or a return_url).
//
// Usage: node browser-reauth.mjs --url LINK --screenshot FILE [--login USER] [--stop-at-connect]
//        [--final-prefix URL] [--timeout-ms N]
// Prints one JSON line on stdout:
//   {"connect":{"status","title","text","html","csp"},"final":{"url","title","text"},
//    "callback_url", "navigations":[...], "csp_violations":[...], "provider_forms_submitted":N}
// Exit code 0 when the flow reached a final page, 1 otherwise (with {"error"} on stdout).

import { chromium } from 'playwright-core';

function parseArgs(argv) {
  const out = { login: 'user-1', timeoutMs: 30000, stopAtConnect: false };
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    const next = () => {
      i += 1;
      if (i >= argv.length) throw new Error(`missing value for ${a}`);
      return argv[i];
    };
    if (a === '--url') out.url = next();
    else if (a === '--screenshot') out.screenshot = next();
    else if (a === '--login') out.login = next();
    else if (a === '--final-prefix') out.finalPrefix = next();
    else if (a === '--timeout-ms') out.timeoutMs = Number(next());
    else if (a === '--stop-at-connect') out.stopAtConnect = true;
    else throw new Error(`unknown argument ${a}`);
  }
  if (!out.url) throw new Error('--url is required');
  return out;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    // Root in CI: Chromium's sandbox needs user namespaces that a container may not grant.
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
    timeout: args.timeoutMs,
  });
  const result = { navigations: [], csp_violations: [], provider_forms_submitted: 0 };
  try {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.setDefaultTimeout(args.timeoutMs);
    page.on('console', (m) => {
      const t = m.text();
      if (/Content Security Policy|Refused to/i.test(t)) result.csp_violations.push(t);
    });
    page.on('request', (r) => {
      if (r.isNavigationRequest()) {
        result.navigations.push(r.url());
        if (r.url().includes('/oauth/callback')) result.callback_url = r.url();
      }
    });

    const first = await page.goto(args.url, { waitUntil: 'load' });
    result.connect = {
      status: first.status(),
      title: await page.title(),
      text: await page.innerText('body'),
      html: await page.content(),
      csp: (await first.allHeaders())['content-security-policy'] ?? null,
    };
    if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
    if (args.stopAtConnect) {
      process.stdout.write(`${JSON.stringify(result)}\n`);
      return 0;
    }

    // Reconnect (a form POST), then tokend's continue page sends us on to the provider.
    await page.click('form button[type=submit]');
    const onProvider = async () => {
      const u = new URL(page.url());
      return u.pathname.startsWith('/interaction/');
    };
    const deadline = Date.now() + args.timeoutMs;
    const isFinal = () => {
      const u = page.url();
      if (args.finalPrefix && u.startsWith(args.finalPrefix)) return true;
      return u.includes('/oauth/callback');
    };
    while (!isFinal() && Date.now() < deadline) {
      // eslint-disable-next-line no-await-in-loop
      await page.waitForLoadState('load');
      if (isFinal()) break;
      // eslint-disable-next-line no-await-in-loop
      if (await onProvider()) {
        // oidc-provider's dev interactions: a login form, then a consent form.
        // eslint-disable-next-line no-await-in-loop
        const login = await page.$('input[name=login]');
        if (login) {
          await login.fill(args.login);
          await page.fill('input[name=password]', 'any-password');
        }
        // eslint-disable-next-line no-await-in-loop
        await Promise.all([
          page.waitForNavigation({ waitUntil: 'load' }),
          page.click('button[type=submit]'),
        ]);
        result.provider_forms_submitted += 1;
      } else {
        // eslint-disable-next-line no-await-in-loop
        await page.waitForTimeout(100);
      }
    }
    if (!isFinal()) throw new Error(`no final page; stuck at ${page.url()}`);
    await page.waitForLoadState('load');
    // A "still finishing" page reloads itself; wait for the result.
    for (let i = 0; i < 50 && /Still finishing/.test(await page.title()); i += 1) {
      // eslint-disable-next-line no-await-in-loop
      await page.waitForTimeout(200);
    }
    result.final = {
      url: page.url(),
      title: await page.title(),
      text: await page.innerText('body'),
    };
    process.stdout.write(`${JSON.stringify(result)}\n`);
    return 0;
  } finally {
    await browser.close();
  }
}

main().then((code) => process.exit(code), (err) => {
  process.stdout.write(`${JSON.stringify({ error: String(err?.stack || err) })}\n`);
  process.exit(1);
});
