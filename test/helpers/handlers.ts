import { requests, type RequestName } from '../../src-shared/api/contract.js';
import type { Handlers } from '../../src-main/app/router/router.js';

/** Router handlers for host/router tests: the ones given, every other request refused loudly. */
export function testHandlers(given: Partial<Handlers>): Handlers {
  const all = {} as Record<RequestName, unknown>;
  for (const name of Object.keys(requests) as RequestName[]) {
    all[name] = given[name] ?? (async () => Promise.reject(new Error(`${name} is not part of this test`)));
  }
  return all as Handlers;
}
