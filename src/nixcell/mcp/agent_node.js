// The node interpreter of a nixcell session (runs inside the cell, started by agent.py as
// `node --expose-internals agent_node.js CODE_FD EVENT_FD`).
//
// Reads framed code from CODE_FD ("<id> <length>\n" then exactly `length` bytes of UTF-8), runs
// each call as a script in the main context, and reports on EVENT_FD: `ready` once, then per call
// `started <id>` and `done <id> <status>` (0 ok, 1 uncaught exception, 130 interrupted).
//
// Why it looks like this: the user's code shares the main context's global scope with whatever
// the driver would put there, so the driver puts nothing there. Everything below is local to
// this module, and every global the driver uses is captured once at load: a user's
// `const fs = …`, `function compile() {}`, `let JSON = 1` or `Promise = null` (in any call) can
// neither collide with the driver nor change what it calls. The only globals it adds are the
// ones a script has: require, module, exports, __filename, __dirname. Top-level await goes
// through the node REPL's own transform (hence --expose-internals), which hoists the code's
// declarations to the script's top level so they persist like any other call's.
'use strict';
const { Script, constants: vmConstants } = require('vm');
const { writeSync } = require('fs');
const { Socket } = require('net');
const { inspect } = require('util');
const Module = require('module');
const { join } = require('path');
const { Buffer: NodeBuffer } = require('buffer');

const [codeFd, evFd] = process.argv.slice(2).map(Number);
const proc = process;
const out = proc.stdout;
const err = proc.stderr;
const write = out.write;
const on = proc.on;
const NativeError = Error;
const NativeSyntaxError = SyntaxError;
const { assign } = Object;
const toNumber = Number;
const NativePromise = Promise;
const concat = NodeBuffer.concat;
const apply = Reflect.apply;
const loader = vmConstants && vmConstants.USE_MAIN_CONTEXT_DEFAULT_LOADER;
let topLevelAwait = null;
try {
  topLevelAwait = require('internal/repl/await').processTopLevelAwait;
  topLevelAwait('await 0'); // its parser loads now, before any user code shadows `require`
} catch {} // not this node: code with top-level await runs wrapped (its declarations local)

// What a script sees: `require` relative to the working directory, its own module object.
const filename = join(proc.cwd(), '[session]');
const mod = new Module(filename, null);
mod.filename = filename;
mod.paths = Module._nodeModulePaths(proc.cwd());
mod.loaded = true;
const scriptRequire = Module.createRequire(filename);
scriptRequire.main = mod; // `if (require.main === module) main()` runs, as in a script
const scriptGlobals = {
  require: scriptRequire,
  module: mod,
  exports: mod.exports,
  __filename: filename,
  __dirname: proc.cwd(),
};
for (const [name, value] of Object.entries(scriptGlobals)) {
  Object.defineProperty(globalThis, name, { value, writable: true, configurable: true });
}
proc.argv = [proc.argv[0]];

const emit = (line) => writeSync(evFd, line + '\n');
const isInterrupt = (e) => {
  try { return e !== null && typeof e === 'object' && e.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED'; }
  catch { return false; }
};
const driverFrame = /^\s+at .*(node:|agent_node\.js)/;

function describe(e) {
  try {
    if (e instanceof NativeError && typeof e.stack === 'string') return e.stack;
  } catch {} // a throwing `stack` getter: described below
  try { return 'Uncaught ' + inspect(e); } catch {}
  return 'Uncaught exception (it could not be described)';
}

function report(e) {
  if (e === exitRequest) return; // process.exit() in a callback: the call has ended
  const text = describe(e).split('\n').filter((l) => !driverFrame.test(l)).join('\n');
  try { apply(write, err, [text + '\n']); } catch {}
}

// Errors of async work nobody awaits are printed (stderr of the call running then), never fatal.
apply(on, proc, ['uncaughtException', report]);
apply(on, proc, ['unhandledRejection', report]);
let current = null;
apply(on, proc, ['SIGINT', () => { if (current && current.interrupt) current.interrupt(); }]);

function compile(code, name) {
  const opts = loader ? { filename: name, importModuleDynamically: loader } : { filename: name };
  try {
    return new Script(code, opts);
  } catch (e) {
    if (!(e instanceof NativeSyntaxError) || !/\bawait\b/.test(code)) throw e;
    let wrapped = null;
    try { wrapped = topLevelAwait && topLevelAwait(code); } catch {}
    // The REPL's transform keeps the code on its lines; the plain wrap adds one before it.
    if (wrapped) return new Script(wrapped, opts);
    if (topLevelAwait) throw e; // not top-level await: the code's own syntax error
    return new Script('(async () => {\n' + code + '\n})()', { ...opts, lineOffset: -1 });
  }
}

const flush = (stream) => new NativePromise((resolve) => {
  try { apply(write, stream, ['', resolve]); } catch { resolve(); }
});

let calls = 0;
// process.exit() during a call ends the call with its status, not the session (as `exit 5` in
// bash and sys.exit(5) in python): it unwinds the code by throwing, and ends a call that is
// awaiting. Between calls (a timer's), it really exits: the next call says so.
const realExit = proc.exit;
const exitRequest = Symbol('process.exit');
proc.exit = function exit(code) {
  if (current === null) return apply(realExit, proc, [code]);
  const status = toNumber(code === undefined ? (proc.exitCode ?? 0) : code) & 0xff;
  current.exited = status;
  if (current.settle) current.settle();
  throw exitRequest;
};

async function runCall(id, code) {
  emit('started ' + id);
  const call = current = { interrupt: null, settle: null, exited: null };
  let status = 0;
  try {
    const result = compile(code, '<call ' + ++calls + '>').runInThisContext({ breakOnSigint: true });
    if (result !== null && (typeof result === 'object' || typeof result === 'function')
        && typeof result.then === 'function') {
      await new NativePromise((resolve, reject) => {
        call.interrupt = () => reject(assign(new NativeError('interrupted by SIGINT'),
          { code: 'ERR_SCRIPT_EXECUTION_INTERRUPTED' }));
        call.settle = resolve;
        apply(result.then, result, [resolve, reject]);
      });
    }
  } catch (e) {
    if (e !== exitRequest) {
      status = isInterrupt(e) ? 130 : 1;
      report(e);
    }
  }
  if (call.exited !== null) status = call.exited;
  current = null;
  await flush(out);
  await flush(err);
  emit('done ' + id + ' ' + status);
}

let pending = [];
let busy = false;
function next() {
  if (busy) return;
  const buf = apply(concat, NodeBuffer, [pending]);
  pending = [buf];
  const nl = buf.indexOf(10);
  if (nl < 0) return;
  const [id, length] = buf.subarray(0, nl).toString().split(' ');
  const end = nl + 1 + toNumber(length);
  if (buf.length < end) return;
  const code = buf.subarray(nl + 1, end).toString('utf8');
  pending = [buf.subarray(end)];
  busy = true;
  runCall(id, code).finally(() => { busy = false; next(); });
}

async function start() {
  // The first dynamic import through the main context's loader prints an ExperimentalWarning
  // (once per process): have it now, while start-up output is nobody's.
  if (loader) {
    try { await new Script("import('fs')", { importModuleDynamically: loader }).runInThisContext(); }
    catch {}
    await new NativePromise((resolve) => setImmediate(resolve));
  }
  const input = new Socket({ fd: codeFd, readable: true, writable: false });
  input.on('data', (chunk) => { pending.push(chunk); next(); });
  input.on('end', () => proc.exit(0));
  emit('ready');
}
start();
