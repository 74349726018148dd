import { test, expect } from 'vitest';
import { join } from 'node:path';
import { startEnv, run, runOk, nbdMap } from './helpers/env.js';

test('scratch', async () => {
  const env = await startEnv();
  try {
    const img = join(env.dir, 'a.qcow2');
    await runOk('qemu-img', ['create', '-f', 'qcow2', img, '64M']);
    await runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 1M', '-c', 'write -z 4M 1M', img]);
    await env.engine.attach({ id: 'drive0', path: img, format: 'qcow2' });
    console.log((await run('nbdinfo', [env.uri('drive0')])).stdout);
    console.log(await nbdMap(env.uri('drive0')));
    console.log((await run('nbdinfo', ['--list', `nbd+unix://?socket=${env.sock}`])).stdout);
    const r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x22 2M 64k', '-c', 'read -P 0x22 2M 64k', '-c', 'read -P 0x11 0 1M', env.uri('drive0')]);
    console.log(r.stdout, r.stderr);
    console.log(env.log);
  } finally {
    await env.close();
  }
});
