// Every module that registers QMP commands, imported once for its side effect.
import './commands.js';
import './bitmap-commands.js';
import './job-commands.js';
import './object-commands.js';
import './nbd-commands.js';
