import type { BlockEngine } from '../../engine.js';
import { checkArgs, type ArgSpec } from './args.js';
import { blockDeviceInfo, blockInfo } from './block-info.js';
import { generic } from './errors.js';
import { runQemuIo, splitWords } from './qemu-io.js';
import { APP_VERSION_FOR_QMP } from './version.js';

export interface QmpContext {
  engine: BlockEngine;
  /** asks the server to close every image and exit */
  quit(): void;
  log?: (message: string) => void;
}

export interface QmpCommand {
  args: ArgSpec;
  run(args: Record<string, unknown>, ctx: QmpContext): Promise<unknown>;
}

const commands = new Map<string, QmpCommand>();

/** Commands register themselves here; the server looks them up by name. */
export function registerCommand(name: string, command: QmpCommand): void {
  commands.set(name, command);
}

export function findCommand(name: string): QmpCommand | undefined {
  return commands.get(name);
}

export function commandNames(): string[] {
  return [...commands.keys(), 'qmp_capabilities'].sort();
}

registerCommand('query-version', {
  args: {},
  async run() {
    return { qemu: APP_VERSION_FOR_QMP, package: 'tidemark' };
  },
});

registerCommand('query-commands', {
  args: {},
  async run() {
    return commandNames().map((name) => ({ name }));
  },
});

registerCommand('query-status', {
  args: {},
  async run() {
    return { status: 'running', singlestep: false, running: true };
  },
});

registerCommand('query-block', {
  args: {},
  async run(_args, ctx) {
    return Promise.all(ctx.engine.list().map((d) => blockInfo(d)));
  },
});

registerCommand('query-named-block-nodes', {
  args: { flat: { type: 'bool', optional: true } },
  async run(_args, ctx) {
    return Promise.all(ctx.engine.list().map((d) => blockDeviceInfo(d)));
  },
});

registerCommand('quit', {
  args: {},
  async run(_args, ctx) {
    ctx.quit();
    return {};
  },
});

/**
 * HMP passthrough. Only `qemu-io DEVICE "COMMAND"` is supported; like QEMU, failures inside
 * qemu-io are output text (the command itself succeeds), and an unknown device is an
 * "Error: ..." line.
 */
registerCommand('human-monitor-command', {
  args: { 'command-line': { type: 'str' }, 'cpu-index': { type: 'int', optional: true } },
  async run(args, ctx) {
    const line = String(args['command-line']).trim();
    const m = /^qemu-io\s+(?:-d\s+)?(\S+)\s+(.*)$/s.exec(line);
    if (!m) {
      const word = splitWords(line)[0] ?? '';
      if (word === 'qemu-io') return 'Error: qemu-io needs a device and a command\r\n';
      return `unknown command: '${word}'\r\n`;
    }
    const [, device, rest] = m;
    const drive = ctx.engine.lookup(device);
    if (!drive) return `Error: Cannot find device='${device}' nor node-name='${device}'\r\n`;
    const words = splitWords(rest);
    const cmd = words.join(' ');
    try {
      return await runQemuIo(drive, cmd);
    } catch (err) {
      const verb = splitWords(cmd)[0] ?? 'qemu-io';
      return `${verb} failed: ${err instanceof Error ? err.message : String(err)}\r\n`;
    }
  },
});

export { checkArgs, generic };
