import { registerCommand } from './commands.js';
import { generic } from './errors.js';
import type { MergeSource } from '../../bitmap/bitmap-ops.js';

// QMP's dirty-bitmap commands over the engine's BitmapCommands (which hold QEMU's rules).

const nodeName = { node: { type: 'str' }, name: { type: 'str' } } as const;

registerCommand('block-dirty-bitmap-add', {
  args: {
    ...nodeName,
    granularity: { type: 'uint32', optional: true },
    persistent: { type: 'bool', optional: true },
    disabled: { type: 'bool', optional: true },
  },
  async run(a, ctx) {
    ctx.engine.bitmapCommands.add(a.node as string, a.name as string, {
      granularity: a.granularity as number | undefined,
      persistent: a.persistent as boolean | undefined,
      disabled: a.disabled as boolean | undefined,
    });
    return {};
  },
});

registerCommand('block-dirty-bitmap-remove', {
  args: nodeName,
  async run(a, ctx) {
    await ctx.engine.bitmapCommands.remove(a.node as string, a.name as string);
    return {};
  },
});

registerCommand('block-dirty-bitmap-clear', {
  args: nodeName,
  async run(a, ctx) {
    ctx.engine.bitmapCommands.clear(a.node as string, a.name as string);
    return {};
  },
});

registerCommand('block-dirty-bitmap-enable', {
  args: nodeName,
  async run(a, ctx) {
    ctx.engine.bitmapCommands.enable(a.node as string, a.name as string);
    return {};
  },
});

registerCommand('block-dirty-bitmap-disable', {
  args: nodeName,
  async run(a, ctx) {
    ctx.engine.bitmapCommands.disable(a.node as string, a.name as string);
    return {};
  },
});

/** `bitmaps` entries are names (on the target's node) or {node, name} objects. */
export function parseMergeSources(raw: unknown): MergeSource[] {
  if (!Array.isArray(raw)) throw generic("Parameter 'bitmaps' expects array");
  return raw.map((s, i) => {
    if (typeof s === 'string') return s;
    if (typeof s === 'object' && s !== null && typeof (s as { node?: unknown }).node === 'string' && typeof (s as { name?: unknown }).name === 'string') {
      const o = s as { node: string; name: string };
      for (const k of Object.keys(o)) if (k !== 'node' && k !== 'name') throw generic(`Parameter 'bitmaps[${i}].${k}' is unexpected`);
      return { node: o.node, name: o.name };
    }
    throw generic(`Invalid parameter type for 'bitmaps[${i}]', expected: BlockDirtyBitmapOrStr`);
  });
}

registerCommand('block-dirty-bitmap-merge', {
  args: { node: { type: 'str' }, target: { type: 'str' }, bitmaps: { type: 'array' } },
  async run(a, ctx) {
    ctx.engine.bitmapCommands.merge(a.node as string, a.target as string, parseMergeSources(a.bitmaps));
    return {};
  },
});
