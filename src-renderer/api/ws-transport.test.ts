import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { ConnectionStatus } from './transport';
import { createWsTransport, type SocketLike } from './ws-transport';
import { ApiRequestError } from './errors';

class FakeSocket implements SocketLike {
  static all: FakeSocket[] = [];
  readyState = 0;
  sent: unknown[] = [];
  onopen: ((ev: Event) => void) | null = null;
  onclose: ((ev: CloseEvent) => void) | null = null;
  onerror: ((ev: Event) => void) | null = null;
  onmessage: ((ev: MessageEvent) => void) | null = null;
  constructor(readonly url: string) {
    FakeSocket.all.push(this);
  }
  send(data: string): void {
    this.sent.push(JSON.parse(data));
  }
  close(): void {
    this.drop();
  }
  open(): void {
    this.readyState = 1;
    this.onopen?.({} as Event);
  }
  drop(): void {
    this.readyState = 3;
    this.onclose?.({} as CloseEvent);
  }
  receive(message: unknown): void {
    this.onmessage?.({ data: JSON.stringify(message) } as MessageEvent);
  }
}

function setup() {
  FakeSocket.all = [];
  const statuses: ConnectionStatus[] = [];
  const transport = createWsTransport({
    url: 'ws://127.0.0.1:1/api',
    createSocket: (url) => new FakeSocket(url),
    initialDelayMs: 100,
    maxDelayMs: 1000,
    connectWaitMs: 500,
    random: () => 0.5,
  });
  transport.onStatus((s) => statuses.push(s));
  return { transport, statuses, socket: () => FakeSocket.all[FakeSocket.all.length - 1] };
}

describe('ws transport', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('queues requests while connecting and sends them once open', async () => {
    const { transport, socket } = setup();
    expect(transport.status().state).toBe('connecting');
    const reply = transport.request('drives.list', {});
    expect(socket().sent).toEqual([]);
    socket().open();
    expect(socket().sent).toEqual([{ type: 'request', id: 1, method: 'drives.list', params: {} }]);
    socket().receive({ type: 'response', id: 1, ok: true, result: [] });
    await expect(reply).resolves.toEqual({ type: 'response', id: 1, ok: true, result: [] });
  });

  it('delivers events to listeners', () => {
    const { transport, socket } = setup();
    const seen: unknown[] = [];
    transport.onEvent((e) => seen.push(e));
    socket().open();
    socket().receive({ type: 'event', name: 'drives.changed', payload: { drives: [] } });
    socket().receive('garbage');
    expect(seen).toEqual([{ type: 'event', name: 'drives.changed', payload: { drives: [] } }]);
  });

  it('rejects in-flight requests when the socket drops, then reconnects with backoff', async () => {
    const { transport, socket, statuses } = setup();
    socket().open();
    const reply = transport.request('drives.create', {});
    socket().drop();
    await expect(reply).rejects.toBeInstanceOf(ApiRequestError);
    await expect(reply).rejects.toMatchObject({ code: 'IO_ERROR', method: 'drives.create' });
    expect(transport.status()).toMatchObject({ state: 'disconnected', attempts: 1 });

    // while down, requests fail at once instead of running later
    await expect(transport.request('drives.list', {})).rejects.toMatchObject({ code: 'IO_ERROR' });

    expect(FakeSocket.all).toHaveLength(1);
    vi.advanceTimersByTime(100);
    expect(FakeSocket.all).toHaveLength(2);
    socket().drop();
    expect(transport.status()).toMatchObject({ state: 'disconnected', attempts: 2 });
    vi.advanceTimersByTime(199);
    expect(FakeSocket.all).toHaveLength(2);
    vi.advanceTimersByTime(1);
    expect(FakeSocket.all).toHaveLength(3);
    socket().open();
    expect(transport.status()).toMatchObject({ state: 'connected', attempts: 0 });
    expect(statuses.map((s) => s.state)).toEqual([
      'connected',
      'disconnected',
      'connecting',
      'disconnected',
      'connecting',
      'connected',
    ]);
  });

  it('gives a waiting request up after connectWaitMs', async () => {
    const { transport } = setup();
    const reply = transport.request('drives.list', {});
    vi.advanceTimersByTime(500);
    await expect(reply).rejects.toMatchObject({ code: 'IO_ERROR' });
  });

  it('reconnectNow skips the wait; hints after repeated failures', () => {
    const { transport, socket } = setup();
    socket().drop();
    transport.reconnectNow();
    expect(FakeSocket.all).toHaveLength(2);
    socket().drop();
    transport.reconnectNow();
    socket().drop();
    transport.reconnectNow();
    socket().drop();
    expect(transport.status().attempts).toBe(4);
    expect(transport.status().hint).toMatch(/token/);
  });

  it('settles a request whose error envelope has an unknown shape', async () => {
    const { transport, socket } = setup();
    socket().open();
    const reply = transport.request('drives.add', { path: '/x' });
    socket().receive({ type: 'response', id: 1, ok: false, error: { code: 'NEW_CODE', message: 'No such file.' } });
    await expect(reply).resolves.toMatchObject({ ok: false, error: { message: 'No such file.' } });
  });
});
