// mlcompress bundle demo: onnxruntime-web (wasm) runs model.onnx; @huggingface/tokenizers reads tokenizer.json and
// tokenizes as mlcompress.export.runtime does (the manifest's prefix, truncation to max_length, padding with pad_id
// to the longest text of a batch, and the attention mask). Everything is loaded from this folder: it works offline.
//
// Hook for tests and benchmarks, window.mlcompressDemo:
//   ready               a Promise, resolved once the model is loaded and the sentence list embedded
//   embed(texts)        Promise<number[][]>: one embedding per text, as runtime.load(bundle).encode(texts)
//   tokenize(texts)     {input_ids, attention_mask}: what the model is fed (number[][] each)
//   rank(query)         Promise<{text, lang, score}[]>: the sentence list by cosine similarity with query
//   timing              {firstEmbeddingMs (from page start), modelLoadMs, msPerSentence (batch 1), ...}
//   sessionConfig       the session config entries the page gave onnxruntime-web (from the manifest's quantisation)
//   error               null, or the message of what stopped the page

const BATCH = 32; // texts per model run, as runtime.encode
const $ = (id) => document.getElementById(id);

const S = { ort: null, session: null, tokenizer: null, frame: null, tok: null, output: null, list: [], listEmb: [] };
const timing = {
  firstEmbeddingMs: null, modelLoadMs: null, msPerSentence: null, sentences: 0, modelBytes: 0, threads: 1, verified: null,
};
let markLoaded, markReady, failLoaded, failReady;
const loaded = new Promise((res, rej) => { markLoaded = res; failLoaded = rej; });
const ready = new Promise((res, rej) => { markReady = res; failReady = rej; });
loaded.catch(() => {});
ready.catch(() => {});
const demo = { ready, timing, error: null, embed, tokenize, rank, sessionConfig: null };
window.mlcompressDemo = demo;

async function fetchOk(url, kind) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`cannot load ${url}: HTTP ${response.status}`);
  return kind === "json" ? response.json() : response.arrayBuffer();
}

// Check a file against the manifest's sha256, as the Python runtime does. Browsers offer SHA-256 only in secure
// contexts (https, localhost): elsewhere the check is skipped and the page says so.
async function verify(manifest, name, buffer) {
  if (!(globalThis.crypto && crypto.subtle)) return false;
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", buffer));
  const hex = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
  if (hex !== manifest.files?.[name]?.sha256) {
    throw new Error(`${name} does not match its sha256 in manifest.json: it is corrupt or was modified; re-create this folder`);
  }
  return true;
}

// The special tokens the tokenizer's post-processor puts before and after a text (XLM-R: <s> ... </s>), so that
// truncation keeps them, as the tokenizers library's truncation does.
function specialFrame(tokenizer) {
  const probe = "hello world";
  const bare = tokenizer.encode(probe, { add_special_tokens: false }).ids;
  const full = tokenizer.encode(probe, { add_special_tokens: true }).ids;
  for (let i = 0; i + bare.length <= full.length; i++) {
    if (bare.every((id, j) => full[i + j] === id)) return { head: full.slice(0, i), tail: full.slice(i + bare.length) };
  }
  throw new Error("tokenizer.json: its post-processor does not keep the text's tokens together; this page cannot truncate it");
}

function tokenize(texts) {
  const { head, tail } = S.frame;
  const room = Math.max(0, S.tok.max_length - head.length - tail.length);
  const rows = Array.from(texts, (text) => {
    const ids = S.tokenizer.encode(S.tok.prefix + String(text), { add_special_tokens: false }).ids;
    return [...head, ...ids.slice(0, room), ...tail];
  });
  const longest = Math.max(0, ...rows.map((r) => r.length));
  const pad = (row, value) => row.concat(Array(longest - row.length).fill(value));
  return {
    input_ids: rows.map((r) => pad(r, S.tok.pad_id)),
    attention_mask: rows.map((r) => pad(r.map(() => 1), 0)),
  };
}

async function runBatch(texts) {
  const { input_ids, attention_mask } = tokenize(texts);
  const shape = [input_ids.length, input_ids[0].length];
  const tensor = (rows) => new S.ort.Tensor("int64", BigInt64Array.from(rows.flat(), BigInt), shape);
  const outputs = await S.session.run({ input_ids: tensor(input_ids), attention_mask: tensor(attention_mask) }, [S.output]);
  const out = outputs[S.output];
  const dim = out.dims[out.dims.length - 1];
  return texts.map((_, i) => Array.from(out.data.subarray(i * dim, (i + 1) * dim)));
}

let queue = Promise.resolve(); // one model run at a time
function serial(task) {
  const run = queue.then(task);
  queue = run.catch(() => {});
  return run;
}

async function embed(texts) {
  await loaded;
  const list = Array.from(texts, String);
  const out = [];
  for (let i = 0; i < list.length; i += BATCH) out.push(...(await serial(() => runBatch(list.slice(i, i + BATCH)))));
  return out;
}

const dot = (a, b) => a.reduce((sum, x, i) => sum + x * b[i], 0);
const norm = (a) => Math.sqrt(dot(a, a)) || 1;

async function rank(query) {
  await ready;
  const [q] = await embed([query]);
  const qn = norm(q);
  return S.list
    .map((s, i) => ({ text: s.text, lang: s.lang || "", score: dot(q, S.listEmb[i]) / (qn * norm(S.listEmb[i])) }))
    .sort((a, b) => b.score - a.score);
}

function render(items, query) {
  const rows = items.map((item) => {
    const li = document.createElement("li");
    const score = document.createElement("span");
    score.className = "score";
    if (item.score !== undefined) {
      score.textContent = item.score.toFixed(3);
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${Math.max(0, item.score) * 100}%`;
      score.append(bar);
    }
    const lang = document.createElement("span");
    lang.className = "lang";
    lang.textContent = item.lang || "";
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = item.text;
    li.append(score, lang, text);
    return li;
  });
  $("results").replaceChildren(...rows);
  $("results").dataset.query = query;
}

let asked = 0;
async function onQuery() {
  const query = $("query").value.trim();
  const mine = ++asked;
  if (!query) {
    render(S.list, "");
    $("status").textContent = `type a sentence to rank these ${S.list.length} sentences`;
    return;
  }
  await new Promise((resolve) => setTimeout(resolve, 60)); // typing: rank only the text the user paused on
  if (mine !== asked) return;
  const t0 = performance.now();
  const ranked = await rank(query);
  if (mine !== asked) return; // a newer query is on its way
  render(ranked, query);
  $("status").textContent = `ranked by cosine similarity with “${query}” in ${(performance.now() - t0).toFixed(1)} ms`;
}

function describe(manifest) {
  const source = String(manifest.source?.source || manifest.model).split("/").filter(Boolean).pop();
  const mb = (manifest.size_bytes || 0) / 1e6;
  const quant = manifest.quantization?.name || "unquantised";
  const langs = (manifest.languages || []).join(", ") || "no languages recorded";
  $("model").textContent = `${source} · ${quant} · ${mb.toFixed(1)} MB bundle · languages: ${langs}`;
}

function showTiming() {
  const t = timing;
  const checked = t.verified ? "checksums verified" : "checksums not checked (not a secure context)";
  $("timing").textContent = `model ${(t.modelBytes / 1e6).toFixed(1)} MB loaded in ${(t.modelLoadMs / 1000).toFixed(2)} s · ` +
    `first embedding ${(t.firstEmbeddingMs / 1000).toFixed(2)} s after page start · ` +
    `${t.msPerSentence.toFixed(1)} ms per sentence (batch 1, wasm, ${t.threads} thread${t.threads > 1 ? "s" : ""}) · ${checked}`;
}

async function load() {
  const [ort, { Tokenizer }, manifest] = await Promise.all([
    import("./vendor/ort.wasm.min.mjs"), import("./vendor/tokenizers.min.mjs"), fetchOk("manifest.json", "json"),
  ]);
  describe(manifest);
  S.tok = { prefix: manifest.tokenizer.prefix || "", max_length: manifest.tokenizer.max_length, pad_id: manifest.tokenizer.pad_id };
  S.output = manifest.head.output;
  $("status").textContent = "loading the model…";
  const [model, tok, list] = await Promise.all([
    fetchOk(manifest.model), fetchOk(manifest.tokenizer.file), fetchOk("sentences.json", "json"),
  ]);
  const checks = await Promise.all([verify(manifest, manifest.model, model), verify(manifest, manifest.tokenizer.file, tok)]);
  timing.verified = checks.every(Boolean);
  S.tokenizer = new Tokenizer(JSON.parse(new TextDecoder().decode(tok)), {});
  S.frame = specialFrame(S.tokenizer);
  timing.threads = globalThis.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  ort.env.wasm.numThreads = timing.threads;
  ort.env.wasm.wasmPaths = new URL("vendor/", location.href).href;
  ort.env.logLevel = "error";
  demo.sessionConfig = sessionConfig(manifest);
  S.session = await ort.InferenceSession.create(new Uint8Array(model),
                                                { executionProviders: ["wasm"], extra: demo.sessionConfig });
  S.ort = ort;
  S.list = list;
  timing.modelBytes = model.byteLength;
  timing.modelLoadMs = performance.now();
  markLoaded();
}

// The session config entries the bundle's quantisation asks for (none today; bundles written before int8-weights used
// Cast and Mul asked for "session.disable_quant_qdq": "1"), in onnxruntime-web's nested form ({session: {...}}).
function sessionConfig(manifest) {
  const extra = {};
  for (const [key, value] of Object.entries((manifest.quantization || {}).session_config || {})) {
    const [group, ...rest] = key.split(".");
    (extra[group] = extra[group] || {})[rest.join(".")] = String(value);
  }
  return extra;
}

async function embedList() {
  const times = [];
  for (const [i, item] of S.list.entries()) {
    const t0 = performance.now();
    S.listEmb.push((await embed([item.text]))[0]);
    times.push(performance.now() - t0);
    if (i === 0) timing.firstEmbeddingMs = performance.now();
    if (i % 10 === 0) $("status").textContent = `embedding the sentences: ${i + 1} of ${S.list.length}…`;
  }
  const warm = times.length > 1 ? times.slice(1) : times; // the first run also sets the kernels up
  timing.msPerSentence = warm.length ? warm.reduce((a, b) => a + b, 0) / warm.length : 0;
  timing.sentences = S.list.length;
}

async function main() {
  await load();
  await embedList();
  showTiming();
  const box = $("query");
  box.disabled = false;
  box.placeholder = `Type a sentence (${(S.list.find((s) => s.lang) ? [...new Set(S.list.map((s) => s.lang))].join(", ") : "any language")})…`;
  box.addEventListener("input", () => onQuery().catch(fail));
  await onQuery();
  box.focus();
  markReady();
}

function fail(error) {
  const served = location.protocol === "file:" ? "\nServe this folder over http, e.g. python -m http.server -d FOLDER, and open that address." : "";
  demo.error = String(error?.message || error);
  $("status").className = "error";
  $("status").textContent = `error: ${demo.error}${served}`;
  failLoaded(error);
  failReady(error);
}

main().catch(fail);
