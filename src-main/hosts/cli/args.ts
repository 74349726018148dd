/**
 * A small, strict argument parser: `--name value`, `--name=value`, repeatable options, flags.
 * Unknown options are errors (a typo in a cron job must fail loudly, not be ignored).
 */
export interface OptionSpec {
  /** takes a value (else a boolean flag) */
  value?: boolean;
  /** may be given several times */
  repeat?: boolean;
}

export interface ParsedArgs {
  positional: string[];
  options: Map<string, string[]>;
  flags: Set<string>;
}

export class UsageError extends Error {}

export function parseArgs(argv: string[], spec: Record<string, OptionSpec>): ParsedArgs {
  const out: ParsedArgs = { positional: [], options: new Map(), flags: new Set() };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--') {
      out.positional.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith('--')) {
      out.positional.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const name = eq > 0 ? arg.slice(2, eq) : arg.slice(2);
    const s = spec[name];
    if (!s) throw new UsageError(`unknown option --${name}`);
    if (!s.value) {
      if (eq > 0) throw new UsageError(`--${name} takes no value`);
      out.flags.add(name);
      continue;
    }
    const value = eq > 0 ? arg.slice(eq + 1) : argv[++i];
    if (value === undefined) throw new UsageError(`--${name} needs a value`);
    const list = out.options.get(name) ?? [];
    if (list.length && !s.repeat) throw new UsageError(`--${name} given twice`);
    list.push(value);
    out.options.set(name, list);
  }
  return out;
}

/** `id=drive0,file=/x.qcow2,format=qcow2` → {id, file, format}; commas in values double as `,,` like QEMU. */
export function parseKeyValues(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < text.length; i++) {
    if (text[i] === ',' && text[i + 1] === ',') {
      cur += ',';
      i++;
    } else if (text[i] === ',') {
      parts.push(cur);
      cur = '';
    } else cur += text[i];
  }
  parts.push(cur);
  for (const p of parts) {
    const eq = p.indexOf('=');
    if (eq <= 0) throw new UsageError(`expected key=value, got '${p}'`);
    out[p.slice(0, eq)] = p.slice(eq + 1);
  }
  return out;
}
