import { QmpError, generic } from './errors.js';

/**
 * Argument checking with QEMU's QAPI wording: "Parameter 'x' is missing", "Parameter 'x' is
 * unexpected", "Parameter 'x' expects <type>". Commands declare their arguments once.
 */
export type ArgType = 'str' | 'int' | 'uint32' | 'uint64' | 'bool' | 'any' | 'object' | 'array';
export type ArgSpec = Record<string, { type: ArgType; optional?: boolean; enum?: readonly string[] }>;

const TYPE_NAME: Record<ArgType, string> = {
  str: 'string',
  int: 'integer',
  uint32: 'uint32_t',
  uint64: 'uint64_t',
  bool: 'boolean',
  any: 'any',
  object: 'object',
  array: 'array',
};

function matches(type: ArgType, v: unknown): boolean {
  switch (type) {
    case 'str':
      return typeof v === 'string';
    case 'int':
      return typeof v === 'number' && Number.isInteger(v);
    case 'uint32':
      return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
    case 'uint64':
      return typeof v === 'number' && Number.isInteger(v) && v >= 0;
    case 'bool':
      return typeof v === 'boolean';
    case 'object':
      return typeof v === 'object' && v !== null && !Array.isArray(v);
    case 'array':
      return Array.isArray(v);
    case 'any':
      return true;
  }
}

export function checkArgs(spec: ArgSpec, raw: unknown, prefix = ''): Record<string, unknown> {
  if (raw === undefined) raw = {};
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw generic("QMP input member 'arguments' must be an object");
  const args = raw as Record<string, unknown>;
  for (const key of Object.keys(args)) {
    if (!(key in spec)) throw generic(`Parameter '${prefix}${key}' is unexpected`);
  }
  for (const [name, s] of Object.entries(spec)) {
    const v = args[name];
    if (v === undefined) {
      if (!s.optional) throw generic(`Parameter '${prefix}${name}' is missing`);
      continue;
    }
    if (!matches(s.type, v)) throw generic(`Parameter '${prefix}${name}' expects ${TYPE_NAME[s.type]}`);
    if (s.enum && !s.enum.includes(v as string)) throw generic(`Parameter '${prefix}${name}' does not accept value '${String(v)}'`);
  }
  return args;
}

/** QEMU's id_wellformed (object, export and job ids): a letter, then letters, digits, '-', '.', '_'. */
export const QEMU_ID = /^[A-Za-z][A-Za-z0-9._-]*$/;

export { QmpError };
