import { describe, expect, it } from 'vitest';
import { JsonStreamSplitter, normalizeQuotes } from './json-stream.js';

describe('JsonStreamSplitter', () => {
  it('splits objects with or without newlines and across chunks', () => {
    const s = new JsonStreamSplitter();
    expect(s.push('{"a": 1}{"b"')).toEqual([{ ok: true, text: '{"a": 1}' }]);
    expect(s.push(': "}{"}\n  {"c": [1, {"d": 2}]}')).toEqual([
      { ok: true, text: '{"b": "}{"}' },
      { ok: true, text: '{"c": [1, {"d": 2}]}' },
    ]);
  });
  it('handles escapes inside strings', () => {
    expect(new JsonStreamSplitter().push('{"a": "x\\"}"}')).toEqual([{ ok: true, text: '{"a": "x\\"}"}' }]);
  });
  it('reports stray closers and keeps going', () => {
    const out = new JsonStreamSplitter().push('}{"a":1}');
    expect(out[0].ok).toBe(false);
    expect(out[1]).toEqual({ ok: true, text: '{"a":1}' });
  });
  it('refuses absurd nesting without recursion', () => {
    const out = new JsonStreamSplitter().push('['.repeat(2000));
    expect(out).toEqual([{ ok: false, error: 'JSON parse error, nesting too deep' }]);
  });
  it('passes bare scalars through for the caller to refuse', () => {
    expect(new JsonStreamSplitter().push('42 ')).toEqual([{ ok: true, text: '42' }]);
  });
});

describe('normalizeQuotes', () => {
  it("turns QEMU's single-quoted strings into JSON", () => {
    expect(JSON.parse(normalizeQuotes("{'execute': 'query-block', 'arguments': {'x': 'it\\'s \"q\"'}}"))).toEqual({
      execute: 'query-block',
      arguments: { x: 'it\'s "q"' },
    });
  });
});
