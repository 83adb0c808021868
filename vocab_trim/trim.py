"""`trim`: cut a model's vocabulary to the tokens its target languages use (after Ushio et al. 2023).

On text whose original tokens are all kept, the trimmed tokenizer yields the same tokens (with
new ids) and the trimmed model the same outputs, bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlcompress.artifacts import atomic_output_dir, sha256_file, write_provenance
from mlcompress.errors import InputError, LanguageError, ModelSourceError, OutputExistsError, UnsupportedModelError
from mlcompress.sources import DEFAULT_MODEL, load_model, load_tokenizer, resolve_model

from . import tokenizer_surgery as ts
from mlcompress.corpus import Corpus, parse_corpora
from .counting import TokenCounts, count_corpus
from mlcompress.languages import normalize_language, parse_languages
from .model_surgery import config_token_ids, trim_model, vocab_rows
from .policies import make_policy
from .policies import word_variants as expand_word_variants
from .spm_model import SPM_FILES, trim_spm_model

ID_MAP_FILE = "id_map.json"
COUNTS_FILE = "token_counts.npz"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ckpt")
_REWRITTEN = {"config.json", "added_tokens.json", "generation_config.json", "tokenizer.json", "model.safetensors.index.json", "mlcompress.json",
              ID_MAP_FILE, COUNTS_FILE, "vocab.txt", "vocab.json", "merges.txt", *SPM_FILES}
_SELF_CHECK_LINES = 200


@dataclass
class TrimResult:
    """What a trim wrote and measured."""

    output: Path
    languages: list[str]
    vocab_before: int
    vocab_after: int
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int
    coverage: dict[str, float] = field(default_factory=dict)
    tokens_counted: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings)."""
        out = asdict(self)
        out["output"] = str(self.output)
        return out


def _params(model: Any) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _weights_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES))


def trim(
    model: str | os.PathLike[str] = DEFAULT_MODEL,
    languages: str | list[str] = "en,de",
    corpora: Mapping[str, Any] | Iterable[str] | None = None,
    output: str | os.PathLike[str] = "trimmed",
    *,
    top_k: int | None = None,
    min_count: int | None = None,
    coverage: float | None = None,
    quotas: Mapping[str, int] | None = None,
    scripts: bool = False,
    keep_tokens: Iterable[str] = (),
    word_variants: bool = False,
    overwrite: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> TrimResult:
    """Trim ``model``'s vocabulary to ``languages`` and write a `save_pretrained` directory to ``output``.

    With no policy option every token the corpora use is kept (min count 1); ``scripts=True``
    needs no corpus. ``word_variants`` also keeps the capitalised, lower-case and unmarked forms
    of kept word pieces. Writes the id map, the counts and ``mlcompress.json`` beside the model.
    """
    langs = parse_languages(languages)
    texts = parse_corpora(corpora)
    extra = sorted(set(texts) - set(langs))
    if extra:
        raise LanguageError(f"corpus given for {', '.join(extra)}, which is not among the target languages {langs}",
                            "add the language to -l, or drop its --corpus")
    policy = make_policy(langs, top_k=top_k, min_count=min_count, coverage=coverage,
                         quotas={normalize_language(k): v for k, v in (quotas or {}).items()}, scripts=scripts)
    if policy.needs_counts:
        missing = [lang for lang in langs if lang not in texts]
        if missing:
            raise LanguageError(f"no text for language(s) {', '.join(missing)}",
                                "pass --corpus LANG=PATH for each target language, or use --scripts (needs no corpus)")
    out_path = Path(output).expanduser().absolute()
    if out_path.exists() and not overwrite:
        raise OutputExistsError(f"output {out_path} already exists", "choose another output path, or pass --overwrite")
    cache = Path(cache_dir) if cache_dir else None
    timings: dict[str, float] = {}

    source = resolve_model(model, cache)
    tok = load_tokenizer(source.path)
    backend = tok.backend_tokenizer
    tj = json.loads(backend.to_str())
    ts.model_type(tj)
    by_id = ts.pieces(tj)

    t0 = time.perf_counter()
    counts: dict[str, np.ndarray] = {}
    tokens_counted: dict[str, int] = {}
    for lang in langs if policy.needs_counts else [lang for lang in langs if lang in texts]:
        total = np.zeros(len(by_id), dtype=np.int64)
        for corpus in texts[lang]:
            found, _ = count_corpus(backend, corpus, lang, len(by_id), cache)
            total += found.counts
        counts[lang] = total
        tokens_counted[lang] = int(total.sum())
    timings["count"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    net = load_model(source.path)
    timings["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rows = vocab_rows(net)
    keep = policy.select(counts, ts.surface_texts(tj))
    if word_variants:
        keep = expand_word_variants(by_id, keep, ts.word_marker(tj))
    keep |= ts.required_ids(tj)
    without_row = sorted(i for i in ts.required_ids(tj) | config_token_ids(net) if i >= min(rows, len(by_id)))
    if without_row:
        raise UnsupportedModelError(
            f"the tokenizer has {len(by_id)} tokens and the model {rows} embedding rows, but token id(s) {without_row[:5]} "
            "that the tokenizer or config needs fall outside one of them",
            "resize the model's embeddings to the tokenizer (model.resize_token_embeddings(len(tokenizer))) and save it again")
    keep |= config_token_ids(net)
    index = {p: i for i, p in enumerate(by_id) if p is not None}
    for token in keep_tokens:
        if token not in index:
            raise InputError(f"--keep-token {token!r} is not in the tokenizer's vocabulary", "list tokens as the tokenizer writes them, e.g. ▁Berlin")
        keep.add(index[token])
    keep = ts.merge_closure(tj, keep)
    keep_ids = sorted(i for i in keep if i < min(len(by_id), rows) and by_id[i] is not None)
    params_before = _params(net)
    new_tj, old_to_new = ts.trim_tokenizer_json(tj, keep_ids)
    trim_model(net, keep_ids, old_to_new)
    timings["trim"] = time.perf_counter() - t0

    kept_mask = np.zeros(len(by_id), dtype=bool)
    kept_mask[keep_ids] = True
    cover = {lang: float(c[kept_mask].sum() / max(c.sum(), 1)) for lang, c in counts.items()}

    t0 = time.perf_counter()
    with atomic_output_dir(out_path, overwrite=overwrite) as tmp:
        net.save_pretrained(tmp)
        _write_tokenizer(source.path, tmp, new_tj, old_to_new, {by_id[i] for i in keep_ids})
        (tmp / ID_MAP_FILE).write_text(json.dumps({"source_vocab_size": len(by_id), "source_rows": rows,
                                                   "old_ids": keep_ids}) + "\n", encoding="utf-8")
        if counts:
            np.savez_compressed(tmp / COUNTS_FILE, **counts)
        _self_check(tok, tmp, texts, old_to_new)
        result = TrimResult(
            output=out_path, languages=langs, vocab_before=len(by_id), vocab_after=len(keep_ids),
            params_before=params_before, params_after=_params(net),
            bytes_before=_weights_bytes(source.path), bytes_after=_weights_bytes(tmp),
            coverage=cover, tokens_counted=tokens_counted, seconds=timings,
        )
        timings["save"] = time.perf_counter() - t0
        write_provenance(
            tmp, "trim",
            parameters={"languages": langs, "policy": {"name": type(policy).__name__, **asdict(policy)},
                        "keep_tokens": list(keep_tokens), "word_variants": word_variants},
            inputs=[source.describe() | {"sha256": _model_sha(source.path)}]
            + [{"language": lang, "corpus": c.spec, "fingerprint": c.fingerprint()} for lang, cs in texts.items() for c in cs],
            metrics={k: v for k, v in result.as_dict().items() if k not in ("output", "languages")},
        )
    return result


def _model_sha(path: Path) -> str | None:
    weights = sorted(f for f in path.iterdir() if f.name.endswith(".safetensors"))
    return sha256_file(weights[0]) if len(weights) == 1 else None


def _write_tokenizer(src: Path, dst: Path, new_tj: dict[str, Any], old_to_new: dict[int, int], kept: set[str | None]) -> None:
    """Tokenizer files: tokenizer.json, tokenizer_config.json re-indexed, legacy vocab and .model files trimmed."""
    for item in src.iterdir():
        if item.name in _REWRITTEN or item.name.endswith(_WEIGHT_SUFFIXES) or item.name.startswith("."):
            continue
        if item.is_file():
            shutil.copy2(item, dst / item.name)
        elif item.is_dir() and item.name.split("_", 1)[0].isdigit():  # sentence-transformers modules (1_Pooling ...)
            shutil.copytree(item, dst / item.name)
    (dst / "tokenizer.json").write_text(json.dumps(new_tj, ensure_ascii=False), encoding="utf-8")
    config_path = dst / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if isinstance(config.get("added_tokens_decoder"), dict):
            config["added_tokens_decoder"] = {str(old_to_new[int(k)]): v for k, v in config["added_tokens_decoder"].items()
                                              if int(k) in old_to_new}
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    legacy = src / "added_tokens.json"  # older checkpoints: token -> id, read when there is no added_tokens_decoder
    if legacy.is_file():
        added = json.loads(legacy.read_text(encoding="utf-8"))
        (dst / legacy.name).write_text(json.dumps({t: old_to_new[i] for t, i in added.items() if i in old_to_new},
                                                  indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    ts.write_vocab_files(new_tj, src, dst)
    for name in SPM_FILES:
        if (src / name).is_file():
            trim_spm_model(src / name, dst / name, {p for p in kept if p is not None})


def _self_check(tok: Any, trimmed_dir: Path, texts: Mapping[str, list[Corpus]], old_to_new: dict[int, int]) -> None:
    """Refuse to write a trim whose tokenizer does not reproduce the source's tokens on covered corpus lines."""
    from transformers import AutoTokenizer

    try:
        new_tok = AutoTokenizer.from_pretrained(trimmed_dir)
    except Exception as exc:
        raise UnsupportedModelError(f"the trimmed tokenizer does not load ({type(exc).__name__}: {exc})",
                                    "please report this with the model's name") from exc
    lines = [line for cs in texts.values() for c in cs for line in _head(c, _SELF_CHECK_LINES // max(len(texts), 1))]
    for line in lines:
        old = tok(line, verbose=False)["input_ids"]
        if all(i in old_to_new for i in old):
            new = new_tok(line, verbose=False)["input_ids"]
            if new != [old_to_new[i] for i in old]:
                raise UnsupportedModelError(
                    f"the trimmed tokenizer changes the tokens of a fully covered line: {line[:80]!r}",
                    "this tokenizer's pipeline is not supported yet; please report it with the model's name",
                )


def _head(corpus: Corpus, n: int) -> list[str]:
    out = []
    for line in corpus.lines():
        out.append(line)
        if len(out) >= n:
            break
    return out
