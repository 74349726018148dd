import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'node:http';
import { WebSocket } from 'ws';
import { WebHost } from './web-host.js';
import { EventBus, Router } from '../../app/router/router.js';
import { testHandlers } from '../../../test/helpers/handlers.js';

const staticDir = mkdtempSync(join(tmpdir(), 'tm-web-'));
writeFileSync(join(staticDir, 'index.html'), '<!doctype html><title>t</title>');
const bus = new EventBus();
const router = new Router(
  testHandlers({
    'app.info': async () => ({ version: 't', host: 'web', dataDir: '/d', engine: { ioWorkers: 2 }, nbdSocket: null, nbdTcp: null }),
    'drives.list': async () => [],
  }),
);
const host = new WebHost({ router, bus, staticDir, port: 0 });
let url: URL;

beforeAll(async () => {
  url = new URL(await host.start());
});
afterAll(() => host.stop());

function get(path: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: url.port, path, headers: { host: `127.0.0.1:${url.port}`, ...headers } }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function cookie(): Promise<string> {
  const r = await get(`/?token=${host.token}`);
  expect(r.status).toBe(303);
  expect(r.headers.location).toBe('/');
  const set = String(r.headers['set-cookie']);
  expect(set).toMatch(/HttpOnly/);
  expect(set).toMatch(/SameSite=Strict/);
  return set.split(';')[0];
}

function ws(headers: Record<string, string>): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const sock = new WebSocket(`ws://127.0.0.1:${url.port}/api`, { headers });
    sock.once('open', () => resolve(sock));
    sock.once('error', reject);
    sock.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
  });
}

describe('web console security', () => {
  it('listens on 127.0.0.1 only and prints a token URL', () => {
    expect(url.hostname).toBe('127.0.0.1');
    expect(url.searchParams.get('token')).toBe(host.token);
    expect(host.token.length).toBeGreaterThanOrEqual(40);
  });

  it('refuses a request without the token', async () => {
    const r = await get('/');
    expect(r.status).toBe(401);
    expect(r.body).not.toContain('<title>');
  });

  it('refuses a wrong token', async () => {
    expect((await get('/?token=nope')).status).toBe(401);
  });

  it('serves the page with the cookie, with a strict CSP', async () => {
    const r = await get('/', { cookie: await cookie() });
    expect(r.status).toBe(200);
    expect(r.body).toContain('<title>t</title>');
    expect(r.headers['content-security-policy']).toContain("default-src 'none'");
    expect(r.headers['x-frame-options']).toBe('DENY');
  });

  it('refuses foreign Host and Origin headers (DNS rebinding)', async () => {
    const c = await cookie();
    expect((await get('/', { cookie: c, host: `evil.example:${url.port}` })).status).toBe(403);
    expect((await get('/', { cookie: c, origin: 'http://evil.example' })).status).toBe(403);
  });

  it('does not serve files outside the renderer folder', async () => {
    const c = await cookie();
    expect((await get('/..%2f..%2fetc%2fpasswd', { cookie: c })).status).toBe(404);
    expect((await get('/%2e%2e/%2e%2e/etc/passwd', { cookie: c })).status).toBe(404);
  });

  it('refuses a WebSocket without the cookie or from a foreign origin', async () => {
    await expect(ws({ origin: `http://127.0.0.1:${url.port}` })).rejects.toThrow(/403/);
    const c = await cookie();
    await expect(ws({ cookie: c, origin: 'http://evil.example' })).rejects.toThrow(/403/);
    await expect(ws({ cookie: c })).rejects.toThrow(/403/);
  });

  it('answers requests and delivers events over an authorised WebSocket', async () => {
    const sock = await ws({ cookie: await cookie(), origin: `http://127.0.0.1:${url.port}` });
    const messages: unknown[] = [];
    sock.on('message', (d) => messages.push(JSON.parse(String(d))));
    sock.send(JSON.stringify({ type: 'request', id: 1, method: 'drives.list', params: {} }));
    sock.send('not json');
    sock.send(JSON.stringify({ type: 'request', id: 2, method: 'nope', params: {} }));
    await new Promise((r) => setTimeout(r, 200));
    bus.emit('drives.changed', { drives: [] });
    await new Promise((r) => setTimeout(r, 100));
    sock.close();
    expect(messages).toContainEqual({ type: 'response', id: 1, ok: true, result: [] });
    expect(messages).toContainEqual({ type: 'response', id: 0, ok: false, error: { code: 'INVALID_INPUT', message: 'Malformed request: not JSON.' } });
    expect(messages).toContainEqual(expect.objectContaining({ id: 2, ok: false, error: expect.objectContaining({ code: 'UNKNOWN_METHOD' }) }));
    expect(messages).toContainEqual({ type: 'event', name: 'drives.changed', payload: { drives: [] } });
  });

  it('refuses to bind anything but loopback', () => {
    expect(() => new WebHost({ router, bus, staticDir, port: 0, host: '0.0.0.0' })).toThrow(/127\.0\.0\.1/);
  });
});
