import { describe, expect, it } from 'vitest';
import type { EventEnvelope, ResponseEnvelope } from '../../src-shared/api/wire';
import { createApiClient } from './client';
import { ApiRequestError } from './errors';
import type { ConnectionStatus, Transport } from './transport';

const drive = {
  id: 'd0',
  path: '/tmp/d0.img',
  format: 'raw',
  virtualSize: 10 * 2 ** 30,
  actualSize: 0,
  backingChain: [],
  readOnly: false,
  state: 'online',
} as const;

function fakeTransport(reply: (method: string, params: unknown) => unknown) {
  const listeners = new Set<(e: EventEnvelope) => void>();
  const status: ConnectionStatus = { state: 'connected', attempts: 0 };
  const transport: Transport = {
    request: async (method, params) => reply(method, params) as ResponseEnvelope,
    onEvent: (l) => {
      listeners.add(l);
      return () => listeners.delete(l);
    },
    status: () => status,
    onStatus: () => () => {},
    reconnectNow: () => {},
  };
  return { transport, emit: (e: EventEnvelope) => listeners.forEach((l) => l(e)) };
}

describe('api client', () => {
  it('returns the validated result', async () => {
    const { transport } = fakeTransport(() => ({ type: 'response', id: 1, ok: true, result: drive }));
    const api = createApiClient(transport);
    await expect(api.request('drives.add', { path: '/tmp/d0.img' })).resolves.toEqual(drive);
  });

  it('rejects with the engine’s error', async () => {
    const { transport } = fakeTransport(() => ({
      type: 'response',
      id: 1,
      ok: false,
      error: { code: 'FILE_NOT_FOUND', message: 'There is no file at /nope.' },
    }));
    const api = createApiClient(transport);
    const err = await api.request('drives.add', { path: '/nope' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiRequestError);
    expect(err).toMatchObject({ code: 'FILE_NOT_FOUND', message: 'There is no file at /nope.', method: 'drives.add' });
  });

  it('rejects a result that does not match the output schema', async () => {
    const { transport } = fakeTransport(() => ({ type: 'response', id: 1, ok: true, result: { id: 5 } }));
    const api = createApiClient(transport);
    await expect(api.request('drives.add', { path: '/x' })).rejects.toMatchObject({ code: 'INTERNAL' });
  });

  it('keeps the message of an error envelope with an unknown code', async () => {
    const { transport } = fakeTransport(() => ({
      type: 'response',
      id: 1,
      ok: false,
      error: { code: 'SOMETHING_NEW', message: 'A new kind of failure.' },
    }));
    const api = createApiClient(transport);
    await expect(api.request('app.info', {})).rejects.toMatchObject({ code: 'INTERNAL', message: 'A new kind of failure.' });
  });

  it('wraps transport failures', async () => {
    const { transport } = fakeTransport(() => {
      throw new Error('boom');
    });
    const api = createApiClient(transport);
    await expect(api.request('app.info', {})).rejects.toMatchObject({ code: 'IO_ERROR' });
  });

  it('delivers valid events and drops invalid ones', () => {
    const { transport, emit } = fakeTransport(() => undefined);
    const api = createApiClient(transport);
    const seen: unknown[] = [];
    const off = api.on('drives.changed', (p) => seen.push(p.drives.length));
    emit({ type: 'event', name: 'drives.changed', payload: { drives: [drive] } });
    emit({ type: 'event', name: 'drives.changed', payload: { drives: 'nope' } });
    emit({ type: 'event', name: 'unknown.event', payload: {} });
    off();
    emit({ type: 'event', name: 'drives.changed', payload: { drives: [] } });
    expect(seen).toEqual([1]);
  });
});
