// Every module that registers QMP commands, imported once for its side effect.
import './commands.js';
import './bitmap-commands.js';
import './job-commands.js';
import './nbd-commands.js';
