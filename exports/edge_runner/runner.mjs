#!/usr/bin/env node
// Score (conversation, response) rows with the reward model in this folder, without Arbiter.
//
//   npm ci                                   # onnxruntime-node, @huggingface/tokenizers, @huggingface/jinja
//   node runner.mjs IN.jsonl [-o OUT.jsonl] [--model fp32|int8]
//   node runner.mjs --check                  # manifest (sha256 + size), then golden.jsonl
//
// The same rules, messages and exit codes as runner.py beside it: rows are {"prompt": str} or
// {"conversation": [{role, content}, ...]}, plus "response" (and optionally "system"); each is
// written back with "score" added, a Bradley-Terry logit (only differences mean something:
// P(A better than B) = sigmoid(score_A - score_B)). Everything about the input comes from
// arbiter.json. Bad input is one line and exit status 2; --check exits 1 on a score mismatch.
// It is also a module: the functions below are exported for other scripts and pages.
// .npmrc (ignore-scripts) keeps onnxruntime-node's install script from downloading CUDA libraries;
// the CPU ones come inside the npm package.

import { createHash } from 'node:crypto';
import { openSync, readSync, closeSync, readFileSync, realpathSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROLES = ['system', 'user', 'assistant'];
// arbiter.json keys every runner reads (the pair- or chat-only ones are checked by use)
const REQUIRED = ['edge_version', 'files', 'inputs', 'output', 'max_length', 'encoding',
  'length_correction', 'tolerance'];

/** Bad input or a bad folder: printed as one line, exit status 2. */
export class RunnerError extends Error {}

/** The response alone does not fit: refused, never cut (a cut response is another response). */
class TooLong extends Error {}

export function readJson(path) {
  let text;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new RunnerError(e.code === 'ENOENT' ? `${path}: missing file (copy the whole edge folder)`
      : `${path}: not readable JSON (${e.message})`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new RunnerError(`${path}: not readable JSON (${e.message})`);
  }
}

function sha256(path) {
  const h = createHash('sha256');
  const buf = Buffer.alloc(1 << 20); // 1 MiB at a time: model files are large
  const fd = openSync(path, 'r');
  try {
    for (let n; (n = readSync(fd, buf, 0, buf.length, null)) > 0;) h.update(buf.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

/** Every file of manifest.json (or only `names`) has its size and sha256. */
export function verify(names = null, dir = HERE) {
  const files = readJson(join(dir, 'manifest.json')).files ?? {};
  for (const name of names ?? Object.keys(files).sort()) {
    const path = join(dir, name), want = files[name];
    if (want === undefined) throw new RunnerError(`manifest.json does not list ${name}`);
    let size;
    try {
      size = statSync(path).isFile() ? statSync(path).size : -1;
    } catch {
      size = -1;
    }
    if (size < 0) throw new RunnerError(`${path}: missing file (manifest.json lists it)`);
    if (size !== want.size || sha256(path) !== want.sha256) {
      throw new RunnerError(`manifest mismatch: ${name} is not the file that was exported `
        + '(size or sha256 differs); copy it again');
    }
  }
}

// -- rows --------------------------------------------------------------------------------------
/** Python's name for a JSON value's type, so messages read as runner.py's do. */
function pyType(v) {
  if (v === null) return 'NoneType';
  if (Array.isArray(v)) return 'list';
  if (typeof v === 'number') return Number.isInteger(v) ? 'int' : 'float';
  return { string: 'str', boolean: 'bool', object: 'dict' }[typeof v] ?? typeof v;
}

/** Python's repr of a JSON scalar (roles in messages). */
function pyRepr(v) {
  if (v === undefined || v === null) return 'None';
  if (typeof v === 'string') return `'${v.replaceAll('\\', '\\\\').replaceAll("'", "\\'")}'`;
  if (typeof v === 'boolean') return v ? 'True' : 'False';
  return JSON.stringify(v);
}

/** The path of the first string in `value` (keys too) that is not valid Unicode, or null. */
function loneSurrogate(value, at = '') {
  if (typeof value === 'string') return value.isWellFormed() ? null : at || '(value)';
  const items = Array.isArray(value) ? value.entries() : pyType(value) === 'dict' ? Object.entries(value) : [];
  for (const [k, v] of items) {
    const key = typeof k === 'number' ? `${at}[${k}]` : at ? `${at}.${k}` : k;
    const found = (typeof k === 'string' && loneSurrogate(k, key)) || loneSurrogate(v, key);
    if (found) return found;
  }
  return null;
}

/** [messages, response] of one input row; throws Error("field 'X': why") when it is bad. */
export function parseRow(row) {
  const bad = (msg) => new Error(msg);
  if (pyType(row) !== 'dict') throw bad(`expected a JSON object, got ${pyType(row)}`);
  const where = loneSurrogate(row); // "\ud800" is valid JSON but not text: no tokenizer reads it
  if (where !== null) throw bad(`field '${where}': not valid Unicode (a lone surrogate)`);
  if (!('response' in row)) throw bad("field 'response': missing (every row needs the response to score)");
  if (typeof row.response !== 'string') {
    throw bad(`field 'response': must be a string; got ${pyType(row.response)}`);
  }
  let messages;
  if ('conversation' in row) {
    if (!Array.isArray(row.conversation)) {
      throw bad("field 'conversation': must be a list of {role, content} messages");
    }
    messages = row.conversation;
  } else if ('prompt' in row) {
    if (typeof row.prompt !== 'string') throw bad("field 'prompt': must be a string");
    messages = [{ role: 'user', content: row.prompt }];
  } else {
    throw bad("field 'conversation': missing: give 'conversation' (a list of messages) or 'prompt' (a string)");
  }
  messages = messages.map((m, i) => {
    if (pyType(m) !== 'dict') throw bad(`field 'conversation[${i}]': expected an object with role and content`);
    if (!ROLES.includes(m.role)) {
      throw bad(`field 'conversation[${i}].role': role must be one of ${ROLES.join(', ')}; got ${pyRepr(m.role)}`);
    }
    if (typeof m.content !== 'string') throw bad(`field 'conversation[${i}].content': content must be a string`);
    return { role: m.role, content: m.content };
  });
  if ('system' in row) {
    if (typeof row.system !== 'string') throw bad("field 'system': must be a string");
    messages.unshift({ role: 'system', content: row.system });
  }
  if (messages.length === 0) throw bad("field 'conversation': a conversation needs at least one message");
  if (messages.at(-1).role === 'assistant') {
    throw bad(`field 'conversation[${messages.length - 1}].role': the last message is an `
      + "assistant turn; the response to score goes in 'response'");
  }
  return [messages, row.response];
}

/** [line number, row, messages, response] of every non-blank line of a JSONL file. */
export function readRows(path) {
  let bytes;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw new RunnerError(e.code === 'ENOENT' ? `${path}: missing file` : `${path}: cannot read (${e.message})`);
  }
  const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: false }); // drops a leading BOM
  let text;
  try {
    text = utf8.decode(bytes);
  } catch {
    let line = 1; // the first line that does not decode
    for (let start = 0; ; line++) {
      const end = bytes.indexOf(0x0a, start);
      try {
        new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(start, end < 0 ? bytes.length : end));
      } catch {
        break;
      }
      start = end + 1;
    }
    throw new RunnerError(`${path}:${line}: not UTF-8 text`);
  }
  const rows = [];
  text.split('\n').forEach((line, i) => {
    if (!line.trim()) return;
    let row;
    try {
      row = JSON.parse(line);
    } catch (e) {
      throw new RunnerError(`${path}:${i + 1}: not valid JSON (${e.message})`);
    }
    try {
      rows.push([i + 1, row, ...parseRow(row)]);
    } catch (e) {
      throw new RunnerError(`${path}:${i + 1}: ${e.message}`);
    }
  });
  return rows;
}

/** A package of package.json, or a message that says how to install it. */
async function need(name) {
  try {
    return await import(name);
  } catch (e) {
    if (e.code !== 'ERR_MODULE_NOT_FOUND') throw e;
    throw new RunnerError(`${name} is not installed: run \`npm ci\` in ${HERE}`);
  }
}

// -- the model -----------------------------------------------------------------------------------
/** One ONNX file of this folder, with the tokenizer and the input rules of arbiter.json. */
export class Model {
  /** `parts`: {tokenizer, session, Tensor, template}; a page builds them from onnxruntime-web. */
  constructor(kind, meta, parts) {
    Object.assign(this, { kind, meta, maxLength: meta.max_length }, parts);
  }

  /** The model file `kind` of the folder `dir`, through onnxruntime-node. */
  static async open(kind, meta, { threads = 0, dir = HERE } = {}) {
    const [ort, { Tokenizer }] = await Promise.all([need('onnxruntime-node'), need('@huggingface/tokenizers')]);
    const file = join(dir, meta.files[kind]);
    const m = { Tensor: ort.Tensor };
    try {
      m.tokenizer = new Tokenizer(readJson(join(dir, 'tokenizer.json')),
        readJson(join(dir, 'tokenizer_config.json')));
    } catch (e) {
      if (e instanceof RunnerError) throw e;
      const why = String(e.message).slice(0, 200);
      throw new RunnerError(`${join(dir, 'tokenizer.json')}: not a readable tokenizer (${why})`);
    }
    try {
      m.session = await ort.InferenceSession.create(file, {
        executionProviders: ['cpu'], logSeverityLevel: 3, ...(threads > 0 ? { intraOpNumThreads: threads } : {}),
      });
    } catch (e) {
      throw new RunnerError(`${file}: onnxruntime cannot load it (${String(e.message).slice(0, 200)}); `
        + 'run `node runner.mjs --check`');
    }
    if (meta.encoding === 'chat') {
      const { Template } = await need('@huggingface/jinja');
      m.template = new Template(meta.chat_template); // trim_blocks + lstrip_blocks, as the engine renders
    }
    return new Model(kind, meta, m);
  }

  ids(text, special) {
    return this.tokenizer.encode(text, { add_special_tokens: special }).ids;
  }

  /** [input ids, token type ids] exactly as Arbiter's engine builds them. */
  encode(messages, response) {
    return this.template ? this.encodeChat(messages, response) : this.encodePair(messages, response);
  }

  tooLong(n) {
    return new TooLong(`the response alone is ${n} tokens; this model reads at most ${this.maxLength}. `
      + 'A cut response would be a different response, so it is not scored.');
  }

  encodePair(messages, response) {
    const lay = this.meta.pair_layout, names = this.meta.role_names;
    const text = messages.length === 1 && messages[0].role === 'user' ? messages[0].content
      : messages.map((m) => `${names[m.role]}: ${m.content}`).join('\n');
    let first = this.ids(text, false);
    const second = this.ids(response, false);
    const budget = this.maxLength - lay.prefix.length - lay.middle.length - lay.suffix.length - second.length;
    if (budget < 1) throw this.tooLong(second.length);
    first = first.slice(Math.max(0, first.length - budget)); // the conversation is cut from its start
    const ids = [...lay.prefix, ...first, ...lay.middle, ...second, ...lay.suffix];
    const [tp, ta, tm, tb, ts] = lay.types;
    const types = [...tp, ...first.map(() => ta), ...tm, ...second.map(() => tb), ...ts];
    return [ids, this.meta.token_types === 'segment' ? types : ids.map(() => 0)];
  }

  render(messages, generationPrompt) {
    // special tokens as template variables: strings only, as the engine passes them
    const special = Object.fromEntries(Object.entries(this.meta.special_tokens ?? {})
      .filter(([, v]) => typeof v === 'string'));
    let text;
    try {
      text = this.template.render({ messages, add_generation_prompt: generationPrompt, ...special });
    } catch (e) { // the template is the model's code: whatever it raises is its failure
      throw new RunnerError(`the model's chat template failed on this conversation: ${e.message}`);
    }
    const bos = this.meta.strip_bos; // the tokenizer adds BOS itself: never twice
    return bos && text.startsWith(bos) ? text.slice(bos.length) : text;
  }

  encodeChat(messages, response) {
    const full = this.ids(this.render([...messages, { role: 'assistant', content: response }], false), true);
    const prompt = this.ids(this.render(messages, true), true);
    let p = 0; // the response starts after the longest common prefix of the two
    while (p < Math.min(prompt.length, full.length) && prompt[p] === full[p]) p++;
    if (full.length <= this.maxLength) return [full, full.map(() => 0)];
    const head = this.meta.strip_bos ? 1 : 0; // keep the tokenizer's BOS
    const budget = this.maxLength - head - (full.length - p);
    if (budget < 1) throw this.tooLong(full.length - p);
    const ids = [...full.slice(0, head), ...full.slice(head, p).slice(-budget), ...full.slice(p)];
    return [ids, ids.map(() => 0)];
  }

  /** [final score, tokens read]: the model's output minus the length correction (beta * log1p(code points)). */
  async score(messages, response) {
    const [ids, types] = this.encode(messages, response);
    const arrays = { input_ids: ids, attention_mask: ids.map(() => 1), token_type_ids: types };
    const feeds = {};
    for (const name of this.meta.inputs) {
      if (!arrays[name]) throw new RunnerError(`arbiter.json: unknown model input ${pyRepr(name)}`);
      feeds[name] = new this.Tensor('int64', BigInt64Array.from(arrays[name], BigInt), [1, ids.length]);
    }
    const out = await this.session.run(feeds);
    const raw = Number(out[this.meta.output].data[0]); // float32 -> float64, as numpy's astype
    const beta = this.meta.length_correction;
    // code points, not UTF-16 units: '😀'.length is 2, Python's len('😀') is 1
    return [beta ? raw - beta * Math.log1p([...response].length) : raw, ids.length];
  }
}

async function openModel(meta, kind, threads, checkFiles) {
  const present = ['int8', 'fp32'].filter((k) => meta.files[k]);
  kind = kind ?? present[0];
  if (!present.includes(kind)) {
    const why = kind === 'fp32' ? meta.fp32_absent_reason : null;
    throw new RunnerError(`this folder has no ${kind} model${why ? ': ' + why : ''}`);
  }
  // a corrupted file would give wrong scores silently (tokenizer_config.json: tokenizers.js reads it)
  if (checkFiles) verify([meta.files[kind], 'tokenizer.json', 'tokenizer_config.json', 'arbiter.json']);
  return Model.open(kind, meta, { threads });
}

/** JSON with Python's separators (", ", ": "), so a row reads as runner.py writes it. */
const pyJson = (v) => (Array.isArray(v) ? `[${v.map(pyJson).join(', ')}]`
  : v !== null && typeof v === 'object'
    ? `{${Object.entries(v).map(([k, x]) => `${JSON.stringify(k)}: ${pyJson(x)}`).join(', ')}}`
    : JSON.stringify(v));

async function scoreFile(path, out, model) {
  const lines = [];
  for (const [n, row, messages, response] of readRows(path)) {
    try {
      const [score] = await model.score(messages, response);
      lines.push(pyJson({ ...row, score }));
    } catch (e) {
      if (e instanceof TooLong || e instanceof RunnerError) throw new RunnerError(`${path}:${n}: ${e.message}`);
      throw e;
    }
  }
  const text = lines.map((l) => l + '\n').join(''); // written only when every row is scored
  if (out === undefined) process.stdout.write(text);
  else writeFileSync(out, text, 'utf8');
  return 0;
}

/** Python's format(x, '.2e'): two exponent digits at least (1.20e-06, not 1.20e-6). */
const fmtE = (x) => x.toExponential(2).replace(/e([+-])(\d)$/, 'e$10$2');
/** Python's format(x, 'g') for a tolerance (1e-05, 0.0001). */
const fmtG = (x) => (x !== 0 && (Math.abs(x) < 1e-4 || Math.abs(x) >= 1e6)
  ? fmtE(Number(x.toPrecision(6))).replace(/\.?0+e/, 'e') : String(Number(x.toPrecision(6))));

/** Manifest first (exit 2 naming the file), then every model file on golden.jsonl (exit 1). */
async function check(meta, threads) {
  verify();
  const goldenPath = join(HERE, 'golden.jsonl');
  const golden = readRows(goldenPath);
  let failed = false;
  for (const kind of ['fp32', 'int8']) {
    if (!meta.files[kind]) continue;
    const model = await Model.open(kind, meta, { threads });
    const tol = meta.tolerance[kind];
    let worst = 0, bad = 0;
    for (const [n, row, messages, response] of golden) {
      const want = (row.scores ?? {})[kind];
      let got, nTokens;
      try {
        [got, nTokens] = await model.score(messages, response);
      } catch (e) {
        if (e instanceof TooLong) throw new RunnerError(`${goldenPath}:${n}: ${e.message}`);
        throw e;
      }
      if (typeof want !== 'number') {
        throw new RunnerError(`${goldenPath}:${n}: field 'scores.${kind}': no score for ${kind}`);
      }
      const tokensDiffer = (row.n_tokens ?? nTokens) !== nTokens; // a tokenizer that differs: say so first
      if (tokensDiffer) console.error(`golden.jsonl:${n}: ${nTokens} tokens, the engine read ${row.n_tokens}`);
      worst = Math.max(worst, Math.abs(got - want));
      const off = !(Math.abs(got - want) <= tol); // NaN fails too
      if (off) console.error(`golden.jsonl:${n}: ${kind} score ${got.toFixed(7)}, the engine's ${want.toFixed(7)}`);
      bad += tokensDiffer || off ? 1 : 0;
    }
    console.log(`${meta.files[kind]}: ${golden.length} rows, max |diff| ${fmtE(worst)} (tolerance ${fmtG(tol)}): `
      + (bad ? `FAIL (${bad} rows)` : 'ok'));
    failed ||= bad > 0;
  }
  return failed ? 1 : 0;
}

export async function main(argv = process.argv.slice(2)) {
  let args;
  try {
    args = parseArgs({
      args: argv, allowPositionals: true, options: {
        output: { type: 'string', short: 'o' }, model: { type: 'string' }, check: { type: 'boolean' },
        threads: { type: 'string', default: '0' }, 'no-verify': { type: 'boolean' },
      },
    });
  } catch (e) {
    console.error(`runner: error: ${e.message}`);
    return 2;
  }
  const { values: opt, positionals } = args;
  try {
    const threads = Number(opt.threads);
    if (!Number.isInteger(threads) || threads < 0) {
      throw new RunnerError(`--threads ${opt.threads}: expected a whole number >= 0`);
    }
    if (opt.model !== undefined && !['fp32', 'int8'].includes(opt.model)) {
      throw new RunnerError(`--model ${opt.model}: choose fp32 or int8`);
    }
    if (positionals.length > 1) throw new RunnerError(`one input file, not ${positionals.length}`);
    const meta = readJson(join(HERE, 'arbiter.json'));
    const missing = REQUIRED.filter((k) => !(k in meta));
    if (missing.length || meta.edge_version !== 1) {
      throw new RunnerError(`${join(HERE, 'arbiter.json')}: not an edge_version 1 file `
        + `(missing ${JSON.stringify(missing)})`);
    }
    if (opt.check) return await check(meta, threads);
    if (positionals.length === 0) throw new RunnerError('give IN.jsonl to score, or --check');
    const model = await openModel(meta, opt.model, threads, !opt['no-verify']);
    return await scoreFile(positionals[0], opt.output, model);
  } catch (e) {
    if (!(e instanceof RunnerError)) throw e; // a bug: the stack trace is what to report
    console.error(`runner: error: ${e.message}`);
    return 2;
  }
}

if (globalThis.process?.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  process.exitCode = await main();
}
