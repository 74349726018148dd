import { describe, expect, it, vi } from 'vitest';
import { EventBus, Router, type Handlers } from './router.js';
import { TidemarkError } from '../../../src-shared/errors.js';
import type { DriveInfo } from '../../../src-shared/api/domain.js';
import { testHandlers } from '../../../test/helpers/handlers.js';

const drive: DriveInfo = {
  id: 'd0',
  path: '/x/d0.raw',
  format: 'raw',
  virtualSize: 1024,
  actualSize: 0,
  backingChain: [],
  readOnly: false,
  state: 'online',
};

function handlers(overrides: Partial<Handlers> = {}): Handlers {
  return testHandlers({
    'app.info': async () => ({ version: '1', host: 'web', dataDir: '/d', engine: { ioWorkers: 2 }, nbdSocket: null, nbdTcp: null }),
    'drives.list': async () => [drive],
    'drives.create': async () => drive,
    'drives.add': async () => drive,
    'drives.remove': async () => ({}),
    ...overrides,
  });
}

describe('Router', () => {
  it('answers a valid request with the handler result', async () => {
    const r = new Router(handlers());
    expect(await r.handle({ type: 'request', id: 7, method: 'drives.list', params: {} })).toEqual({ type: 'response', id: 7, ok: true, result: [drive] });
  });

  it('refuses an unknown method', async () => {
    const res = await new Router(handlers()).handle({ type: 'request', id: 1, method: 'drives.format', params: {} });
    expect(res).toMatchObject({ ok: false, error: { code: 'UNKNOWN_METHOD' } });
  });

  it('validates params against the input schema before the handler runs', async () => {
    const add = vi.fn(async () => drive);
    const r = new Router(handlers({ 'drives.add': add }));
    for (const params of [{}, { path: '' }, { path: '/x', id: '9bad' }, { path: '/x', extra: 1 }, 'str']) {
      const res = await r.handle({ type: 'request', id: 1, method: 'drives.add', params });
      expect(res).toMatchObject({ ok: false, error: { code: 'INVALID_INPUT' } });
    }
    expect(add).not.toHaveBeenCalled();
  });

  it('refuses malformed envelopes', async () => {
    const r = new Router(handlers());
    for (const env of [null, 5, { id: 1 }, { type: 'request', id: -1, method: 'x' }, { type: 'request', id: 1, method: 'drives.list', params: {}, more: 1 }]) {
      expect(await r.handle(env)).toMatchObject({ ok: false, error: { code: 'INVALID_INPUT' } });
    }
  });

  it('passes TidemarkError codes and messages through', async () => {
    const r = new Router(handlers({ 'drives.add': async () => Promise.reject(new TidemarkError('FILE_NOT_FOUND', "'/nope' does not exist.")) }));
    expect(await r.handle({ type: 'request', id: 2, method: 'drives.add', params: { path: '/nope' } })).toEqual({
      type: 'response',
      id: 2,
      ok: false,
      error: { code: 'FILE_NOT_FOUND', message: "'/nope' does not exist." },
    });
  });

  it('never sends a result the contract does not promise', async () => {
    const log = vi.fn();
    const r = new Router(handlers({ 'drives.list': async () => [{ id: 'd0' }] as unknown as DriveInfo[] }), log);
    expect(await r.handle({ type: 'request', id: 3, method: 'drives.list', params: {} })).toMatchObject({ ok: false, error: { code: 'INVALID_INPUT' } });
  });

  it('hides unexplained errors behind INTERNAL and logs them', async () => {
    const log = vi.fn();
    const r = new Router(handlers({ 'drives.list': async () => Promise.reject(new Error('boom')) }), log);
    expect(await r.handle({ type: 'request', id: 4, method: 'drives.list', params: {} })).toMatchObject({ ok: false, error: { code: 'INTERNAL' } });
    expect(log).toHaveBeenCalledOnce();
  });
});

describe('EventBus', () => {
  it('delivers validated events and lets listeners go', () => {
    const bus = new EventBus();
    const seen: unknown[] = [];
    const off = bus.subscribe((e) => seen.push(e));
    bus.emit('drives.changed', { drives: [drive] });
    off();
    bus.emit('drives.changed', { drives: [] });
    expect(seen).toEqual([{ type: 'event', name: 'drives.changed', payload: { drives: [drive] } }]);
  });
  it('refuses a payload that breaks the contract', () => {
    expect(() => new EventBus().emit('drives.changed', { drives: [{}] } as never)).toThrow();
  });
});
