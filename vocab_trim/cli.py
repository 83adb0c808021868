"""CLI of the trim stage (`mlcompress trim`), mounted on the root app by ``register(app)``.

One option per parameter of :func:`mlcompress.vocab_trim.trim` (repeatable options take the singular:
``--corpus`` fills ``corpora``, ``--quota`` ``quotas``, ``--keep-token`` ``keep_tokens``). Importing this module is light.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mlcompress.errors import InputError
from mlcompress.sources import DEFAULT_MODEL

# CLI option -> trim() parameter, where the names differ
OPTION_PARAMETERS = {"corpus": "corpora", "quota": "quotas", "keep_token": "keep_tokens"}


def _parse_quotas(items: list[str]) -> dict[str, int]:
    quotas = {}
    for item in items:
        lang, sep, k = item.partition("=")
        if not sep or not k.strip().isdigit():
            raise InputError(f"bad --quota {item!r}", "write it as LANG=K, e.g. --quota en=20000 --quota de=15000")
        quotas[lang] = int(k)
    return quotas


def trim_command(
    model: Annotated[str, typer.Argument(help=f"Model: a save_pretrained directory, a Hub id, or {DEFAULT_MODEL}.")] = DEFAULT_MODEL,
    languages: Annotated[str, typer.Option("-l", "--languages", help="Target languages, e.g. en,de.")] = "en,de",
    corpus: Annotated[Optional[list[str]], typer.Option("--corpus", help="LANG=PATH: a text file or folder (plain or .gz), a datasets id (hf://NAME?config=C&split=S&column=COL&max_lines=N), or a word-frequency list (wordfreq:LANG?n=N). Repeat per language and per corpus.")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Output directory (a save_pretrained model).")] = Path("trimmed"),
    top_k: Annotated[Optional[int], typer.Option(help="Keep the K most frequent tokens (languages weighted equally).")] = None,
    min_count: Annotated[Optional[int], typer.Option(help="Keep tokens seen at least N times (the default recipe keeps N=1 plus frequent words).")] = None,
    coverage: Annotated[Optional[float], typer.Option(help="Per language, keep the tokens covering this fraction of its token occurrences.")] = None,
    quota: Annotated[Optional[list[str]], typer.Option(help="LANG=K: keep each language's own top K tokens. Repeat per language.")] = None,
    scripts: Annotated[bool, typer.Option("--scripts", help="Corpus-free: keep every piece written in the languages' scripts.")] = False,
    keep_token: Annotated[Optional[list[str]], typer.Option(help="A token to keep whatever the policy says. Repeatable.")] = None,
    word_variants: Annotated[Optional[bool], typer.Option("--word-variants/--no-word-variants", help="Also keep capitalised, lower-case and unmarked forms of kept word pieces. [default: on without a policy option]")] = None,
    frequent_words: Annotated[Optional[int], typer.Option(help="Also keep the pieces of each language's N most frequent words (wordfreq), within --max-vocab; 0: none. [default: 20000 without a policy option, else 0]")] = None,
    max_vocab: Annotated[Optional[int], typer.Option(help="Vocabulary budget for the word-list words (the rarest go first; corpus tokens are always kept). [default: 48000]")] = None,
    drop_unused_specials: Annotated[Optional[bool], typer.Option("--drop-unused-specials/--keep-unused-specials", help="Drop added placeholder tokens (<unusedN>, <start_of_image>, reserved tokens) that no config, chat template or corpus uses. [default: on for decoder-only models]")] = None,
    generated: Annotated[int, typer.Option(help="Sample N continuations of corpus lines from the source model (seeded, its own sampling settings) and keep every token it emits; 0: none.")] = 0,
    keep_language_codes: Annotated[str, typer.Option("--keep-language-codes", help="Translation models (mBART-50, M2M100, NLLB): which language-code tokens stay: targets (those of -l), all, or more languages whose codes stay too, e.g. fr,es.")] = "targets",
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT if it exists (only once the new one is complete).")] = False,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Cache for bundled models and token counts.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Cut a model's vocabulary to the tokens the target languages use; outputs are unchanged on covered text."""
    from rich.console import Console

    from mlcompress.artifacts import quiet_transformers

    from .trim import trim

    quiet_transformers()
    result = trim(model, languages, corpus, output, top_k=top_k, min_count=min_count, coverage=coverage,
                  quotas=_parse_quotas(quota or []), scripts=scripts, keep_tokens=keep_token or [], word_variants=word_variants,
                  frequent_words=frequent_words, drop_unused_specials=drop_unused_specials, generated=generated,
                  keep_language_codes=keep_language_codes, overwrite=overwrite, cache_dir=cache_dir,
                  **({"max_vocab": max_vocab} if max_vocab is not None else {}))  # None: trim's own budget
    if as_json:
        Console().print_json(json.dumps(result.as_dict()))
        return
    _print_result(model, result)


def _print_result(model: str, result: Any) -> None:
    """The before/after table, the coverage per language and the trim's notes."""
    from rich.console import Console
    from rich.table import Table

    out, err = Console(), Console(stderr=True, soft_wrap=True)
    table = Table(title=f"trimmed {model} -> {result.output}", show_header=True)
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("ratio", justify="right")
    for name, a, b in (("vocabulary", result.vocab_before, result.vocab_after),
                       ("parameters", result.params_before, result.params_after),
                       ("weight bytes", result.bytes_before, result.bytes_after)):
        table.add_row(name, f"{a:,}", f"{b:,}", f"{b / max(a, 1):.1%}")
    out.print(table)
    for lang, frac in result.coverage.items():
        held = result.heldout_coverage.get(lang)
        estimate = f"; est. {held:.2%} of unseen text's tokens (half the corpus checked against the other half)" if held is not None else ""
        words = f"; + top {result.frequent_words[lang]:,} words" if lang in result.frequent_words else ""
        out.print(f"  {lang}: {result.tokens_counted[lang]:,} tokens counted, {frac:.3%} of them kept{words}{estimate}")
    if result.generation:
        gen = result.generation
        out.print(f"  generated: {gen['continuations']} continuations of {gen['new_tokens']} tokens, {gen['distinct_ids']:,} "
                  f"distinct tokens emitted, {gen['ids_not_in_corpora']:,} of them not in the corpora (kept)")
    for note in result.notes:
        err.print(f"[yellow]note:[/yellow] {note}")


def register(app: typer.Typer) -> None:
    """Add the `trim` command to the root app."""
    app.command("trim")(trim_command)
