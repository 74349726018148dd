import type { APIRequestContext } from '@playwright/test';
import WebSocket from 'ws';
import { expect, test, useTidemarkConsole } from './fixtures.js';

const tm = useTidemarkConsole();

interface WsOutcome {
  opened: boolean;
  status?: number;
  reply?: unknown;
}

/** Opens a WebSocket to /api with the given headers; reports the HTTP status if refused. */
function tryWebSocket(headers: Record<string, string>): Promise<WsOutcome> {
  const url = `${tm.origin.replace(/^http/, 'ws')}/api`;
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { headers });
    ws.once('unexpected-response', (_req, res) => {
      resolve({ opened: false, status: res.statusCode });
      ws.terminate();
    });
    ws.once('error', () => resolve({ opened: false }));
    ws.once('open', () => {
      ws.send(JSON.stringify({ type: 'request', id: 7, method: 'app.info', params: {} }));
      ws.once('message', (data) => {
        resolve({ opened: true, reply: JSON.parse(String(data)) });
        ws.close();
      });
    });
  });
}

/** The cookie the console sets when opened with its token. */
async function tokenCookie(request: APIRequestContext): Promise<string> {
  const res = await request.get(tm.url, { maxRedirects: 0 });
  expect(res.status()).toBe(303);
  const setCookie = res.headers()['set-cookie'] ?? '';
  expect(setCookie).toMatch(/HttpOnly/i);
  return setCookie.split(';')[0];
}

test('the page is refused without the token', async ({ request }) => {
  const plain = await request.get(`${tm.origin}/`);
  expect([401, 403]).toContain(plain.status());
  expect(await plain.text()).not.toContain('<div id="app">');

  const wrong = await request.get(`${tm.origin}/?token=not-the-token`);
  expect([401, 403]).toContain(wrong.status());
});

test('a WebSocket to /api is refused without the cookie', async () => {
  const outcome = await tryWebSocket({ Origin: tm.origin });
  expect(outcome.opened).toBe(false);
  expect([401, 403]).toContain(outcome.status);

  const forged = await tryWebSocket({ Origin: tm.origin, Cookie: 'tidemark_token=forged' });
  expect(forged.opened).toBe(false);
  expect([401, 403]).toContain(forged.status);
});

test('with the cookie the page and /api work, under the strict CSP; a foreign origin is still refused', async ({ request }) => {
  const cookie = await tokenCookie(request);

  const page = await request.get(`${tm.origin}/`, { headers: { Cookie: cookie } });
  expect(page.status()).toBe(200);
  const csp = page.headers()['content-security-policy'] ?? '';
  for (const directive of ["default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'"]) {
    expect(csp).toContain(directive);
  }
  const html = await page.text();
  // no inline scripts or styles in the built page
  expect(html).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/i);
  expect(html).not.toMatch(/<style|\sstyle=/i);

  const ok = await tryWebSocket({ Origin: tm.origin, Cookie: cookie });
  expect(ok.opened).toBe(true);
  expect(ok.reply).toMatchObject({ type: 'response', id: 7, ok: true, result: { host: 'web' } });

  const foreign = await tryWebSocket({ Origin: 'http://evil.example', Cookie: cookie });
  expect(foreign.opened).toBe(false);
  expect([401, 403]).toContain(foreign.status);
});
