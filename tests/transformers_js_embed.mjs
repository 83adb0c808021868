// Embed texts with transformers.js (the npm package @huggingface/transformers) from a local bundle folder, offline:
//   node transformers_js_embed.mjs NODE_PREFIX BUNDLE_DIR TEXTS.json [DTYPE]
// NODE_PREFIX: the folder whose node_modules holds the package (`npm install --prefix NODE_PREFIX ...`).
// Prints {"dtype", "session_config", "embeddings"} as JSON: pipeline('feature-extraction') with mean pooling and
// normalisation, as the README tells transformers.js users to call it, with the session config entries the bundle's
// quantisation asks for, if any, passed as session_options.extra (none today). DTYPE: fp32, q8,
// q4 ... (default: config.json's transformers.js_config).
import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { basename, dirname, join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [prefix, bundle, textsFile, dtype] = process.argv.slice(2);
const entry = createRequire(join(resolve(prefix), "package.json")).resolve("@huggingface/transformers");
const { pipeline, env } = await import(pathToFileURL(entry).href);
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = dirname(resolve(bundle)) + "/";
const config = JSON.parse(readFileSync(join(bundle, "config.json"), "utf-8"));
const manifestFile = join(bundle, "manifest.json");
const manifest = existsSync(manifestFile) ? JSON.parse(readFileSync(manifestFile, "utf-8")) : {};
const extra = manifest.quantization?.session_config || {};
const chosen = dtype || config["transformers.js_config"]?.dtype || "fp32";
const extractor = await pipeline("feature-extraction", basename(resolve(bundle)), { dtype: chosen, session_options: { extra } });
const texts = JSON.parse(readFileSync(textsFile, "utf-8"));
const output = await extractor(texts, { pooling: "mean", normalize: true });
process.stdout.write(JSON.stringify({ dtype: chosen, session_config: extra, embeddings: output.tolist() }));
