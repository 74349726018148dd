/**
 * Splits a QMP byte stream into top-level JSON texts. QMP does not require newlines between
 * messages, so we track nesting and strings ourselves and hand each complete value to
 * JSON.parse. Limits follow QEMU's streamer: nesting ≤ 1024, one message ≤ 64 MiB.
 */
export const MAX_NESTING = 1024;
export const MAX_MESSAGE_BYTES = 64 << 20;

export type StreamItem = { ok: true; text: string } | { ok: false; error: string };

export class JsonStreamSplitter {
  private buf = '';
  private depth = 0;
  private inString: '"' | "'" | null = null;
  private escaped = false;
  private start = -1;
  private scanned = 0;

  /** Feeds text; returns every complete top-level item found so far. */
  push(chunk: string): StreamItem[] {
    this.buf += chunk;
    const out: StreamItem[] = [];
    for (let i = this.scanned; i < this.buf.length; i++) {
      const c = this.buf[i];
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (c === '\\') this.escaped = true;
        else if (c === this.inString) this.inString = null;
        continue;
      }
      if (c === '"' || c === "'") {
        if (this.depth === 0) {
          out.push({ ok: false, error: 'JSON parse error, expecting value' });
          this.reset(i + 1);
          i = -1;
          continue;
        }
        this.inString = c;
      } else if (c === '{' || c === '[') {
        if (this.depth === 0) this.start = i;
        if (++this.depth > MAX_NESTING) {
          out.push({ ok: false, error: 'JSON parse error, nesting too deep' });
          this.reset(i + 1);
          i = -1;
        }
      } else if (c === '}' || c === ']') {
        if (this.depth === 0) {
          out.push({ ok: false, error: `JSON parse error, stray '${c}'` });
          continue;
        }
        if (--this.depth === 0) {
          out.push({ ok: true, text: this.buf.slice(this.start, i + 1) });
          this.reset(i + 1);
          i = -1;
        }
      } else if (this.depth === 0 && c === '\x04') {
        // a control character resets the parser, as in QEMU (lets a client recover from garbage)
        this.reset(i + 1);
        i = -1;
      } else if (this.depth === 0 && !/\s/.test(c)) {
        // a bare scalar at top level: read the token up to the next delimiter
        const m = /^[^\s{}[\]"']+/.exec(this.buf.slice(i));
        const tok = m ? m[0] : c;
        if (i + tok.length >= this.buf.length) {
          // might continue in the next chunk
          this.scanned = i;
          this.buf = this.buf.slice(i);
          this.scanned = 0;
          return out;
        }
        out.push({ ok: true, text: tok });
        this.reset(i + tok.length);
        i = -1;
      }
    }
    this.scanned = this.buf.length;
    if (this.buf.length > MAX_MESSAGE_BYTES) {
      out.push({ ok: false, error: 'JSON parse error, message too large' });
      this.reset(this.buf.length);
    }
    return out;
  }

  private reset(from: number): void {
    this.buf = this.buf.slice(from);
    this.depth = 0;
    this.inString = null;
    this.escaped = false;
    this.start = -1;
    this.scanned = 0;
  }
}

/** QEMU's parser also takes 'single-quoted' strings; turn them into JSON before JSON.parse. */
export function normalizeQuotes(text: string): string {
  if (!text.includes("'")) return text;
  let out = '';
  let quote: '"' | "'" | null = null;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (!quote) {
      if (c === "'") {
        quote = "'";
        out += '"';
      } else {
        if (c === '"') quote = '"';
        out += c;
      }
      continue;
    }
    if (c === '\\') {
      const next = text[i + 1];
      i++;
      if (quote === "'" && next === "'") out += "'";
      else out += c + (next ?? '');
      continue;
    }
    if (c === quote) {
      out += '"';
      quote = null;
    } else if (quote === "'" && c === '"') out += '\\"';
    else out += c;
  }
  return out;
}
