"""`trim`: cut a model's vocabulary to the tokens its target languages use (after Ushio et al. 2023).

On text whose original tokens are all kept, the trimmed tokenizer yields the same tokens (with
new ids) and the trimmed model the same outputs, bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlcompress.artifacts import atomic_output_dir, check_output, sha256_file, write_provenance
from mlcompress.errors import CorpusError, InputError, LanguageError, UnsupportedModelError
from mlcompress.model_card import CARD_FILE, write_model_card
from mlcompress.sources import DEFAULT_MODEL, load_model, load_tokenizer, resolve_model
from mlcompress.st_layout import ST_FILES, read_layout, write_layout

from . import tokenizer_surgery as ts
from mlcompress.corpus import Corpus, parse_corpora
from .counting import count_corpus
from .frequent_words import DEFAULT_FREQUENT_WORDS, DEFAULT_MAX_VOCAB, WordRanks, per_language_words, word_ranks, within_budget
from .generation import Emitted, sample_emitted
from mlcompress.languages import normalize_language, parse_languages
from .model_surgery import config_token_ids, trim_model, vocab_rows
from .policies import UNSPACED, make_policy, word_list_ids
from .policies import word_variants as expand_word_variants
from .specials import unused_specials
from .translation import CodePlan, fix_language_maps, fix_tokenizer_files, parse_keep_language_codes, plan_codes
from .spm_model import SPM_FILES, trim_spm_model

ID_MAP_FILE = "id_map.json"
COUNTS_FILE = "token_counts.npz"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ckpt")
# files the trim writes itself: never copied from the source (its model card's figures and its sentence-transformers
# files are the source's; the trim writes its own)
_REWRITTEN = {"config.json", "added_tokens.json", "generation_config.json", "tokenizer.json", "model.safetensors.index.json", "mlcompress.json",
              ID_MAP_FILE, COUNTS_FILE, "vocab.txt", "vocab.json", "merges.txt", CARD_FILE, *ST_FILES, *SPM_FILES}
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
    heldout_coverage: dict[str, float] = field(default_factory=dict)
    frequent_words: dict[str, int] = field(default_factory=dict)
    specials_dropped: int = 0
    generation: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    translation: dict[str, Any] = field(default_factory=dict)  # a translation model's language codes (mlcompress.translation)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings)."""
        out = asdict(self)
        out["output"] = str(self.output)
        return out

    def summary(self) -> str:
        """A few lines: vocabulary, parameters and weight bytes before -> after, coverage, notes."""
        from mlcompress.summary import change, megabytes, percentages, render

        return render(f"trim to {', '.join(self.languages)} -> {self.output}", [
            ("vocabulary", change(self.vocab_before, self.vocab_after, lambda n: f"{n:,}")),
            ("parameters", change(self.params_before, self.params_after)),
            ("weight bytes", change(self.bytes_before, self.bytes_after, megabytes)),
            ("corpus tokens kept", percentages(self.coverage, 2)),
            ("held-out coverage", percentages(self.heldout_coverage, 2)),
            ("seconds", f"{sum(self.seconds.values()):.1f}" if self.seconds else None),
            *(("note", note) for note in self.notes)])

    def __str__(self) -> str:
        return self.summary()


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
    word_variants: bool | None = None,
    frequent_words: int | None = None,
    max_vocab: int | None = DEFAULT_MAX_VOCAB,
    drop_unused_specials: bool | None = None,
    generated: int = 0,
    keep_language_codes: str | list[str] = "targets",
    overwrite: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> TrimResult:
    """Trim ``model``'s vocabulary to ``languages`` and write a `save_pretrained` directory to ``output``.

    With no policy option (the default recipe) every token the corpora use is kept (min count 1), plus
    the pieces of each language's 20,000 most frequent words (`wordfreq`; ``frequent_words``) while the
    vocabulary stays within ``max_vocab``, plus the capitalised, lower-case and unmarked forms of kept
    word pieces (``word_variants``), so that text the corpora never used keeps its tokens. An explicit
    policy (``top_k``, ``min_count``, ``coverage``, ``quotas``) keeps just what it names unless these two
    are passed too; ``scripts=True`` needs no corpus. Writes the id map, the counts and ``mlcompress.json``
    (with a held-out coverage estimate) beside the model.

    Generative models: ``drop_unused_specials`` (default: on for decoder-only models, off otherwise) drops the
    added placeholder tokens (``<unusedN>``, ``<start_of_image>``, reserved tokens) that no config, generation
    config, tokenizer config or chat template names and no corpus uses. ``generated=N`` samples N continuations
    of corpus lines from the source model (seeded, its own sampling settings) and keeps every token it emits, so
    that the trimmed model can still write what the source would have written.

    Translation models (mBART-50, M2M100, NLLB) keep the language codes of ``languages`` and, with ``keep_language_codes``
    ("all", or more languages: "fr,es"), others; mlcompress.json records the target languages left (`translation`).
    """
    langs, texts = _languages_and_corpora(languages, corpora)
    recipe = _recipe(langs, texts, top_k=top_k, min_count=min_count, coverage=coverage, quotas=quotas, scripts=scripts,
                     keep_tokens=keep_tokens, word_variants=word_variants, frequent_words=frequent_words,
                     max_vocab=max_vocab, drop_unused_specials=drop_unused_specials, generated=generated, keep_language_codes=keep_language_codes)
    out_path = check_output(output, overwrite)
    cache = Path(cache_dir) if cache_dir else None
    timings: dict[str, float] = {}
    source = resolve_model(model, cache)
    layout = read_layout(source.path, str(model))  # a sentence-transformers model stays one (None: not a sentence model)
    tok, tj, by_id = _read_tokenizer(source.path)
    with _timed(timings, "count"):
        counted = _count(tok.backend_tokenizer, recipe.languages_to_count(langs, texts), texts, len(by_id), cache)
        ranks = recipe.word_ranks(tok.backend_tokenizer, langs, len(by_id))
    with _timed(timings, "load"):
        net = load_model(source.path)
    codes = recipe.resolve_for(net, tj, langs)
    model_sha = _model_sha(source.path)
    emitted = _emitted(recipe.generated, net, tok, texts, model_sha, cache, timings)
    with _timed(timings, "trim"):
        prompts = tuple(layout.prompts.values()) if layout is not None else ()
        select = recipe.selection(tj, by_id, net, ranks, _Extras(source.path, tok, counted.counts, emitted, prompts, codes))
        cut = _cut(select, counted.counts, tj, net)
    heldout = counted.heldout_coverage(select)
    cover = _coverage(counted.counts, cut.keep_ids, len(by_id))
    words = dict(per_language_words(ranks, cut.cutoff)) if ranks else {}
    notes = _notes(ranks, recipe, cut) + _special_notes(select, by_id, codes)

    t0 = time.perf_counter()
    with atomic_output_dir(out_path, overwrite=overwrite) as tmp:
        _write_trimmed(tmp, net, source.path, cut, by_id, select, counted.counts, layout, codes)
        _self_check(tok, tmp, texts, cut.old_to_new)
        result = TrimResult(
            output=out_path, languages=langs, vocab_before=len(by_id), vocab_after=len(cut.keep_ids),
            params_before=cut.params_before, params_after=_params(net), bytes_before=_weights_bytes(source.path), bytes_after=_weights_bytes(tmp),
            coverage=cover, tokens_counted=counted.tokens, seconds=timings, heldout_coverage=heldout,
            frequent_words=words, specials_dropped=len(select.dropped - codes.dropped_ids),
            generation=_generation_record(emitted, counted.counts, cut.keep_ids), notes=notes + codes.notes, translation=codes.record())
        timings["save"] = time.perf_counter() - t0  # the same dict as result.seconds: "save" shows there too
        _write_records(tmp, out_path.name, recipe.provenance(langs, ranks), _provenance_inputs(source, texts, model_sha), result)
    return result


def _write_records(tmp: Path, name: str, parameters: dict[str, Any], inputs: list[dict[str, Any]], result: TrimResult) -> None:
    """``mlcompress.json`` (what the trim did and measured), then the model card generated from it."""
    write_provenance(tmp, "trim", parameters=parameters, inputs=inputs,
                     metrics={k: v for k, v in result.as_dict().items() if k not in ("output", "languages")})
    write_model_card(tmp, name=name)


def _languages_and_corpora(languages: str | list[str], corpora: Any) -> tuple[list[str], dict[str, list[Corpus]]]:
    """The target languages and their corpora; a corpus for a language outside the targets is an error."""
    langs = parse_languages(languages)
    texts = parse_corpora(corpora)
    extra = sorted(set(texts) - set(langs))
    if extra:
        raise LanguageError(f"corpus given for {', '.join(extra)}, which is not among the target languages {langs}",
                            "add the language to -l, or drop its --corpus")
    return langs, texts


@dataclass
class _Recipe:
    """What a trim keeps, resolved from its options: the policy, word variants, the word list and its budget."""

    policy: Any
    word_variants: bool
    frequent_words: int
    max_vocab: int | None
    scripts: bool
    keep_tokens: Iterable[str]
    drop_unused_specials: bool | None = None  # None until resolve_for(): on for decoder-only models
    generated: int = 0
    symbols: list[str] = field(default_factory=list)  # languages with word lists only: keep the symbol pieces they lack
    keep_language_codes: str | list[str] = "targets"  # a translation model's codes: "targets", "all" or more languages

    def resolve_for(self, net: Any, tj: dict[str, Any] | None = None, langs: list[str] | None = None) -> CodePlan:
        """Resolve the model-dependent options: unused specials dropped by default for decoder-only models, generated
        continuations refused for a model that cannot generate, and a translation model's codes (`code_plan`)."""
        if self.drop_unused_specials is None:
            self.drop_unused_specials = _is_decoder(net)
        if self.generated and not net.can_generate():
            raise InputError(f"--generated {self.generated} needs a model that generates text; "
                             f"{type(net).__name__} does not", "pass --generated 0 for an encoder")
        return self.code_plan(tj, net, langs) if tj is not None and langs is not None else CodePlan()

    def code_plan(self, tj: dict[str, Any], net: Any, langs: list[str]) -> CodePlan:
        """Which language codes a translation model keeps; configs and the post-processor that name dropped codes are
        fixed in place (``tj``, ``net``) before the ids are chosen."""
        from .translation import clear_dropped_config_ids, retarget_processor

        plan = plan_codes(tj, net, langs, self.keep_language_codes)
        clear_dropped_config_ids(net, plan)
        retarget_processor(tj, plan)
        return plan

    def languages_to_count(self, langs: list[str], texts: Mapping[str, list[Corpus]]) -> list[str]:
        """Every target language when the policy needs counts, else just those with a corpus."""
        return langs if self.policy.needs_counts else [lang for lang in langs if lang in texts]

    def word_ranks(self, backend: Any, langs: list[str], size: int) -> WordRanks | None:
        """The word lists' ranked pieces, when the recipe adds frequent words (never with the script policy)."""
        return word_ranks(backend, langs, self.frequent_words, size) if self.frequent_words and not self.scripts else None

    def selection(self, tj: dict[str, Any], by_id: list[str | None], net: Any, ranks: WordRanks | None,
                  extras: _Extras) -> _Selection:
        """The id selection for this tokenizer and model (fixed ids checked against the model's rows)."""
        fixed, dropped = _fixed_ids(tj, by_id, net, self.keep_tokens, extras, bool(self.drop_unused_specials))
        if self.symbols:
            fixed |= word_list_ids(ts.surface_texts(tj), self.symbols) - dropped
        return _Selection(self.policy, tj, by_id, fixed, vocab_rows(net), self.word_variants, ranks, self.frequent_words,
                          self.max_vocab, dropped)

    def provenance(self, langs: list[str], ranks: WordRanks | None) -> dict[str, Any]:
        """The parameters recorded in mlcompress.json (key order is part of the byte-identical output)."""
        return {"languages": langs, "policy": {"name": type(self.policy).__name__, **asdict(self.policy)},
                "keep_tokens": list(self.keep_tokens), "word_variants": self.word_variants,
                "frequent_words": self.frequent_words, "max_vocab": self.max_vocab, "word_list": _word_list_version(ranks),
                "drop_unused_specials": self.drop_unused_specials, "generated": self.generated,
                "keep_language_codes": self.keep_language_codes,
                **({"word_list_symbols": self.symbols} if self.symbols else {})}


def _recipe(langs: list[str], texts: Mapping[str, list[Corpus]], *, top_k: int | None, min_count: int | None,
            coverage: float | None, quotas: Mapping[str, int] | None, scripts: bool, keep_tokens: Iterable[str],
            word_variants: bool | None, frequent_words: int | None, max_vocab: int | None,
            drop_unused_specials: bool | None, generated: int, keep_language_codes: str | list[str] = "targets") -> _Recipe:
    """Resolve the options: no policy option means the default recipe (word variants and word lists on).

    Checks the word-list options and that a counting policy has text for every language.
    """
    default_recipe = not any(x is not None for x in (top_k, min_count, coverage, quotas or None)) and not scripts
    word_variants = default_recipe if word_variants is None else word_variants
    frequent_words = (DEFAULT_FREQUENT_WORDS if default_recipe else 0) if frequent_words is None else frequent_words
    if frequent_words < 0 or (max_vocab is not None and max_vocab <= 0):
        raise InputError(f"frequent_words must be >= 0 and max_vocab positive (got {frequent_words}, {max_vocab})",
                         "pass --frequent-words 0 to add no word list, and a --max-vocab such as 48000")
    if isinstance(generated, bool) or not isinstance(generated, int) or generated < 0:
        raise InputError(f"generated must be a whole number >= 0 (got {generated!r})",
                         "pass --generated 64 to sample 64 continuations from the source model, or 0 for none")
    if generated and not any(c.word_list is None for cs in texts.values() for c in cs):
        raise CorpusError("--generated samples continuations of corpus lines, and no corpus has text lines",
                          "pass a text corpus (--corpus LANG=PATH), or --generated 0")
    policy = make_policy(langs, top_k=top_k, min_count=min_count, coverage=coverage,
                         quotas={normalize_language(k): v for k, v in (quotas or {}).items()}, scripts=scripts)
    if policy.needs_counts:
        missing = [lang for lang in langs if lang not in texts]
        if missing:
            raise LanguageError(f"no text for language(s) {', '.join(missing)}",
                                "pass --corpus LANG=PATH for each target language, or use --scripts (needs no corpus)")
    # a language known by word lists alone has no digit, punctuation or symbol counted: its sentences' would be cut
    symbols = [lang for lang, cs in texts.items() if cs and all(c.word_list is not None for c in cs)] if policy.needs_counts else []
    return _Recipe(policy, word_variants, frequent_words, max_vocab, scripts, list(keep_tokens), drop_unused_specials,
                   generated, symbols, parse_keep_language_codes(keep_language_codes))


def _is_decoder(net: Any) -> bool:
    """Whether the model is a decoder-only generator (GPT-2, Llama, Qwen, Gemma), not an encoder or seq2seq."""
    return bool(net.can_generate()) and not getattr(net.config, "is_encoder_decoder", False)


@contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Record the seconds the block took under ``key`` (only when it completes, as the trim reports them)."""
    t0 = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t0


def _read_tokenizer(path: Path) -> tuple[Any, dict[str, Any], list[str | None]]:
    """The source tokenizer, its tokenizer.json (a supported model type, else an error) and the piece of each id."""
    tok = load_tokenizer(path)
    tj = json.loads(tok.backend_tokenizer.to_str())
    ts.model_type(tj)
    return tok, tj, ts.pieces(tj)


@dataclass
class _Cut:
    """The selection applied: ids kept (old numbering), the word-list cutoff, the trimmed tokenizer and id map."""

    keep_ids: list[int]
    cutoff: int
    new_tj: dict[str, Any]
    old_to_new: dict[int, int]
    params_before: int


def _cut(select: _Selection, counts: dict[str, np.ndarray], tj: dict[str, Any], net: Any) -> _Cut:
    """Choose the ids from the counts, then trim the tokenizer JSON and the model (in place) to them."""
    keep_ids, cutoff = select(counts)
    params_before = _params(net)
    new_tj, old_to_new = ts.trim_tokenizer_json(tj, keep_ids)
    trim_model(net, keep_ids, old_to_new)
    return _Cut(keep_ids, cutoff, new_tj, old_to_new, params_before)


def _coverage(counts: dict[str, np.ndarray], keep_ids: list[int], size: int) -> dict[str, float]:
    """Share of each language's counted token occurrences whose token is kept."""
    kept_mask = np.zeros(size, dtype=bool)
    kept_mask[keep_ids] = True
    return {lang: float(c[kept_mask].sum() / max(c.sum(), 1)) for lang, c in counts.items()}


def _write_trimmed(tmp: Path, net: Any, source: Path, cut: _Cut, by_id: list[str | None], select: _Selection,
                   counts: dict[str, np.ndarray], layout: Any = None, codes: CodePlan | None = None) -> None:
    """Write the trimmed model, its tokenizer files, its sentence-transformers ``layout`` (a sentence model's), the id
    map and the counts into ``tmp`` (``codes``: a translation model's language codes, to fix the files naming them)."""
    net.save_pretrained(tmp)
    _write_tokenizer(source, tmp, cut.new_tj, cut.old_to_new, {by_id[i] for i in cut.keep_ids},
                     {p for p in (by_id[i] for i in select.dropped) if p is not None})
    if codes is not None:
        fix_tokenizer_files(tmp, codes)
        fix_language_maps(tmp, cut.old_to_new)
    (tmp / ID_MAP_FILE).write_text(json.dumps({"source_vocab_size": len(by_id), "source_rows": select.rows,
                                               "old_ids": cut.keep_ids}) + "\n", encoding="utf-8")
    if counts:
        np.savez_compressed(tmp / COUNTS_FILE, **counts)
    if layout is not None:  # after the tokenizer files: its max_seq_length reads tokenizer_config.json
        write_layout(tmp, layout, int(getattr(net.config, "hidden_size", None) or net.config.d_model))


def _provenance_inputs(source: Any, texts: Mapping[str, list[Corpus]], sha: str | None) -> list[dict[str, Any]]:
    """The inputs recorded in mlcompress.json: the source model (with its weights' hash) and each corpus."""
    return ([source.describe() | {"sha256": sha}]
            + [{"language": lang, "corpus": c.spec, "fingerprint": c.fingerprint()} for lang, cs in texts.items() for c in cs])


@dataclass
class _Counted:
    """Token counts per language: the whole corpora, and their even and odd lines apart."""

    counts: dict[str, np.ndarray]
    halves: dict[str, tuple[np.ndarray, np.ndarray]]
    tokens: dict[str, int]

    def heldout_coverage(self, select: _Selection) -> dict[str, float]:
        """Share of the odd lines' token occurrences that a trim chosen on the even lines keeps, per language.

        An estimate of how the recipe covers text it never saw (from a corpus half the size, so a
        little pessimistic); languages with a single line or only a word list get none.
        """
        if not self.halves:
            return {}
        first = {lang: self.halves[lang][0] if lang in self.halves else c for lang, c in self.counts.items()}
        kept = np.zeros(len(next(iter(self.counts.values()))), dtype=bool)
        kept[select(first)[0]] = True
        return {lang: float(b[kept].sum() / b.sum()) for lang, (_, b) in self.halves.items() if b.sum() > 0}


def _count(backend: Any, langs: list[str], texts: Mapping[str, list[Corpus]], size: int, cache: Path | None) -> _Counted:
    """Count each language's corpora, half by half (word lists whole), summing to the whole."""
    counted = _Counted({}, {}, {})
    for lang in langs:
        first, second = np.zeros(size, dtype=np.int64), np.zeros(size, dtype=np.int64)
        split = False
        for corpus in texts[lang]:
            if corpus.word_list is not None:
                first += count_corpus(backend, corpus, lang, size, cache)[0].counts
                continue
            split = True
            first += count_corpus(backend, corpus, lang, size, cache, half=0)[0].counts
            second += count_corpus(backend, corpus, lang, size, cache, half=1)[0].counts
        total = first + second
        if total.sum() == 0:
            raise CorpusError(f"the corpora for {lang!r} hold no text", "pass a corpus with at least one non-empty line")
        counted.counts[lang], counted.tokens[lang] = total, int(total.sum())
        if split:
            counted.halves[lang] = (first, second)
    return counted


@dataclass
class _Extras:
    """What the fixed ids depend on beyond the tokenizer JSON: the source directory and tokenizer (named special
    tokens, chat templates), the corpus counts, and the ids the source emitted when sampled."""

    source: Path
    tok: Any
    counts: dict[str, np.ndarray]
    emitted: Emitted | None = None
    prompts: tuple[str, ...] = ()  # a sentence model's prompts ("query: ", "passage: ")
    codes: CodePlan | None = None  # a translation model's language codes (the dropped ones go)

    def used(self) -> set[int]:
        """Ids some corpus uses."""
        return {int(i) for c in self.counts.values() for i in np.flatnonzero(c)}

    def prompt_ids(self) -> set[int]:
        """Ids of the prompts' tokens: every sentence embedded with a prompt starts with them, whatever its language."""
        return {int(i) for text in self.prompts for i in self.tok(text, add_special_tokens=False)["input_ids"]}


def _fixed_ids(tj: dict[str, Any], by_id: list[str | None], net: Any, keep_tokens: Iterable[str], extras: _Extras,
               drop_unused: bool) -> tuple[set[int], set[int]]:
    """Ids every trim keeps: special and byte tokens, ids the configs name, the user's ``keep_tokens`` and the ids the
    source emitted; less, with ``drop_unused``, the placeholder specials nothing names or uses (returned too)."""
    rows = vocab_rows(net)
    named = config_token_ids(net)
    without_row = sorted(i for i in ts.required_ids(tj) | named if i >= min(rows, len(by_id)))
    if without_row:
        raise UnsupportedModelError(
            f"the tokenizer has {len(by_id)} tokens and the model {rows} embedding rows, but token id(s) {without_row[:5]} "
            "that the tokenizer or config needs fall outside one of them",
            "resize the model's embeddings to the tokenizer (model.resize_token_embeddings(len(tokenizer))) and save it again")
    index = {p: i for i, p in enumerate(by_id) if p is not None}
    users = set()
    for token in keep_tokens:
        if token not in index:
            raise InputError(f"--keep-token {token!r} is not in the tokenizer's vocabulary", "list tokens as the tokenizer writes them, e.g. ▁Berlin")
        users.add(index[token])
    emitted = extras.emitted.ids if extras.emitted is not None else set()
    fixed = ts.required_ids(tj) | named | users | emitted | extras.prompt_ids()
    dropped = unused_specials(tj, extras.source, extras.tok, named | users | emitted | extras.used()) if drop_unused else set()
    dropped |= extras.codes.dropped_ids - users if extras.codes is not None else set()
    return fixed - dropped, dropped


@dataclass
class _Selection:
    """The trim's choice of ids from counts: policy, fixed ids, word-list words within the budget, variants, closure."""

    policy: Any
    tj: dict[str, Any]
    by_id: list[str | None]
    fixed: set[int]
    rows: int
    word_variants: bool
    ranks: WordRanks | None
    frequent_words: int
    max_vocab: int | None
    dropped: set[int] = field(default_factory=set)  # unused placeholder specials left out

    def __post_init__(self) -> None:  # read from the tokenizer once: the budget's bisection calls finish() many times
        self.marker = ts.word_marker(self.tj)
        self.surface = ts.surface_texts(self.tj)

    def finish(self, ids: set[int]) -> set[int]:
        """Add word variants and the merge closure; drop ids without a row or a piece."""
        if self.word_variants:
            ids = expand_word_variants(self.by_id, ids, self.marker)
        ids = ts.merge_closure(self.tj, ids | self.fixed) - self.dropped
        limit = min(len(self.by_id), self.rows)
        return {i for i in ids if i < limit and self.by_id[i] is not None}

    def __call__(self, counts: dict[str, np.ndarray]) -> tuple[list[int], int]:
        """Sorted ids to keep, and how many of each language's top words they include."""
        base = self.policy.select(counts, self.surface) | self.fixed
        if self.ranks is None:
            return sorted(self.finish(base)), 0
        ids, cutoff = within_budget(base, self.ranks, self.finish, self.max_vocab, self.frequent_words)
        return sorted(ids), cutoff


def _notes(ranks: WordRanks | None, recipe: _Recipe, cut: _Cut) -> list[str]:
    """What the user should know about the word lists: languages without one, words the budget left out (unless the
    corpora kept their tokens anyway), languages whose only text is word lists."""
    notes = []
    if ranks and ranks.missing:
        fallback = "the script policy covers them" if recipe.scripts else "only what the corpora use is kept (or pass --scripts)"
        notes.append(f"wordfreq has no word list for {', '.join(ranks.missing)}: {fallback}")
    if ranks and ranks.words and cut.cutoff < recipe.frequent_words and ranks.ids_below(recipe.frequent_words) - set(cut.keep_ids):
        notes.append(f"the vocabulary budget ({recipe.max_vocab:,} tokens) kept each language's top {cut.cutoff:,} words "
                     f"of {recipe.frequent_words:,}; raise --max-vocab to keep more")
    if recipe.symbols:
        unspaced = [lang for lang in recipe.symbols if lang in UNSPACED]
        notes.append(f"the text of {', '.join(recipe.symbols)} is word lists only, which hold no digits, punctuation or "
                     "symbols: every piece written only in those is kept" + (
                         f"; {', '.join(unspaced)} is written without spaces, so every piece in its script is kept too"
                         if unspaced else ""))
    return notes


def _special_notes(select: _Selection, by_id: list[str | None], codes: CodePlan) -> list[str]:
    """Say which unused placeholder specials the trim dropped, and how to keep them (language codes: their own note)."""
    placeholders = select.dropped - codes.dropped_ids
    if not placeholders:
        return []
    names = [str(by_id[i]) for i in sorted(placeholders)[:3]]
    return [f"dropped {len(placeholders):,} unused special placeholder token(s) ({', '.join(names)}, ...): no config, "
            "chat template or corpus uses them; --keep-unused-specials keeps them"]


def _emitted(generated: int, net: Any, tok: Any, texts: Mapping[str, list[Corpus]], model_sha: str | None,
             cache: Path | None, timings: dict[str, float]) -> Emitted | None:
    """The ids the source model emits on ``generated`` corpus prompts (none asked: None), cached beside the counts."""
    if not generated:
        return None
    from .counting import default_cache_dir

    with _timed(timings, "generate"):
        return sample_emitted(net, tok, texts, generated, model_key=model_sha, cache=cache or default_cache_dir())


def _generation_record(emitted: Emitted | None, counts: dict[str, np.ndarray], keep_ids: list[int]) -> dict[str, Any]:
    """What the generation-aware coverage did, for mlcompress.json: how it sampled, what the model emitted, and how
    many emitted ids no corpus used (the ids it added to the trim)."""
    if emitted is None:
        return {}
    used = {int(i) for c in counts.values() for i in np.flatnonzero(c)}
    new = emitted.ids - used
    return emitted.record | {"distinct_ids": len(emitted.ids), "tokens_emitted": sum(emitted.counts.values()),
                             "ids_not_in_corpora": len(new), "kept": len(emitted.ids & set(keep_ids))}


def _word_list_version(ranks: WordRanks | None) -> str | None:
    if ranks is None:
        return None
    from importlib.metadata import version

    return f"wordfreq {version('wordfreq')} (best)"


def _model_sha(path: Path) -> str | None:
    weights = sorted(f for f in path.iterdir() if f.name.endswith(".safetensors"))
    return sha256_file(weights[0]) if len(weights) == 1 else None


def _write_tokenizer(src: Path, dst: Path, new_tj: dict[str, Any], old_to_new: dict[int, int], kept: set[str | None],
                     dropped: set[str]) -> None:
    """Tokenizer files: tokenizer.json, tokenizer_config.json re-indexed, legacy vocab and .model files trimmed
    (``dropped``: the placeholder specials left out, which a .model file would otherwise keep)."""
    for item in src.iterdir():
        if item.name in _REWRITTEN or item.name.endswith(_WEIGHT_SUFFIXES) or item.name.startswith("."):
            continue
        if item.is_file():  # sentence-transformers module folders (1_Pooling, 2_Dense ...) are written by write_layout
            shutil.copy2(item, dst / item.name)
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
            trim_spm_model(src / name, dst / name, {p for p in kept if p is not None}, dropped)


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
