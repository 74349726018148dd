import { z } from 'zod';

// Zod compiles fast parsers with `new Function` unless told not to. Our CSP has no 'unsafe-eval',
// and even Zod's guarded probe shows up as a CSP violation, so turn the JIT off before any schema
// is built. main.ts imports this module first for that reason.
z.config({ jitless: true });
