"""The command line that makes an artifact again, rendered from its `mlcompress.json` (its stage's parameters and
inputs): what the model card shows under "How it was made", whether the stage ran from the shell or from Python."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

DEFAULT_FREQUENT_WORDS, DEFAULT_MAX_VOCAB = 20000, 48000  # trim's defaults (vocab_trim.frequent_words)


def _corpora(record: dict[str, Any]) -> list[str]:
    return [f"--corpus {shlex.quote(str(i['language']) + '=' + str(i['corpus']))}"
            for i in record.get("inputs") or [] if isinstance(i, dict) and i.get("corpus") and i.get("language")]


def _source(record: dict[str, Any]) -> str:
    first = next((i for i in record.get("inputs") or [] if isinstance(i, dict) and (i.get("source") or i.get("path"))), {})
    return shlex.quote(str(first.get("source") or first.get("path") or "MODEL"))


def _languages(params: dict[str, Any]) -> list[str]:
    langs = params.get("languages")
    return [f"-l {','.join(langs)}"] if isinstance(langs, list) and langs else []


def _trim_policy(params: dict[str, Any]) -> tuple[list[str], bool]:
    """The policy option, and whether the run used the default recipe (no policy option)."""
    policy = dict(params.get("policy") or {})
    name = policy.pop("name", "MinCount")
    if name == "TopK":
        return [f"--top-k {policy.get('k')}"], False
    if name == "Coverage":
        return [f"--coverage {policy.get('fraction')}"], False
    if name == "Quotas":
        return [f"--quota {k}={v}" for k, v in (policy.get("quotas") or {}).items()], False
    if name == "Scripts":
        return ["--scripts"], False
    default = policy.get("n", 1) == 1 and bool(params.get("word_variants"))  # what no policy option gives
    return ([] if default else [f"--min-count {policy.get('n', 1)}"]), default


def trim_command(record: dict[str, Any], name: str) -> str:
    """`mlcompress trim ...` with the options that differ from the defaults of the recipe it used."""
    params = record.get("parameters") or {}
    policy, default = _trim_policy(params)
    parts = ["mlcompress trim", _source(record), *_languages(params), *_corpora(record), *policy]
    if bool(params.get("word_variants")) != default:
        parts.append("--word-variants" if params.get("word_variants") else "--no-word-variants")
    if (params.get("frequent_words") or 0) != (DEFAULT_FREQUENT_WORDS if default else 0):
        parts.append(f"--frequent-words {params.get('frequent_words') or 0}")
    if params.get("max_vocab") not in (None, DEFAULT_MAX_VOCAB):
        parts.append(f"--max-vocab {params['max_vocab']}")
    parts += [f"--keep-token {shlex.quote(t)}" for t in params.get("keep_tokens") or []]
    parts += [f"--generated {params['generated']}"] if params.get("generated") else []
    parts += _keep_language_codes(params)
    return " ".join(parts + [f"-o {shlex.quote(name)}"])


def _keep_language_codes(params: dict[str, Any]) -> list[str]:
    """``--keep-language-codes all`` or ``LANG,...`` when a translation model's trim kept more codes than its targets'."""
    keep = params.get("keep_language_codes")
    if isinstance(keep, list) and keep:
        return [f"--keep-language-codes {shlex.quote(','.join(map(str, keep)))}"]
    return [f"--keep-language-codes {shlex.quote(keep)}"] if isinstance(keep, str) and keep not in ("", "targets") else []


def distill_command(record: dict[str, Any], name: str) -> str:
    """`mlcompress distill general ...` (phase 1) or `mlcompress distill task ...` (phase 2)."""
    params = record.get("parameters") or {}
    train = params.get("train") or {}
    steps = [f"--time-budget {int(train['time_budget'])}s"] if train.get("time_budget") else [f"--steps {train.get('steps')}"]
    common = [*steps, f"--batch-size {train.get('batch_size')}", f"--lr {train.get('lr')}", f"--seed {train.get('seed')}"]
    if record.get("stage") == "distill-task":
        return " ".join(["mlcompress distill task", shlex.quote(str(params.get("student"))), f"--task {params.get('task')}",
                         f"--train {shlex.quote(str(params.get('train_file')))}",
                         f"--teacher {shlex.quote(str(params.get('teacher')))}", *common, f"-o {shlex.quote(name)}"])
    layers = params.get("layers")
    depth = [f"--layers {','.join(map(str, layers)) if isinstance(layers, list) else layers}"] if layers else \
        [f"--every-k {params.get('every_k')}"]
    parts = ["mlcompress distill general", _source(record), *_languages(params), *_corpora(record), *depth,
             f"--objective {params.get('objective')}"]
    parts += [f"--hidden-size {params['hidden_size']}"] if params.get("hidden_size") else []
    parts += ["--trim-vocab"] if params.get("trim_vocabulary") else []
    return " ".join(parts + common + [f"-o {shlex.quote(name)}"])


def export_command(record: dict[str, Any], name: str) -> str:
    """`mlcompress export ...` with its format, quantisation, bundle, languages and task."""
    params = record.get("parameters") or {}
    parts = ["mlcompress export", _source(record), f"--format {params.get('format', 'onnx')}",
             f"--quantize {params.get('quantize')}"]
    parts += ["--bundle"] if params.get("bundle") else []
    parts += _languages(params) + ([f"--task {params['task']}"] if params.get("task") else [])
    parts += ["--ort"] if params.get("ort") else []
    parts += ["--tokenizer-in-graph"] if params.get("tokenizer_in_graph") else []
    return " ".join(parts + [f"-o {shlex.quote(name)}"])


_RENDERERS: dict[str, Callable[[dict[str, Any], str], str]] = {
    "trim": trim_command, "distill-general": distill_command, "distill-task": distill_command, "export": export_command}


def command_for(record: dict[str, Any] | None, name: str) -> str | None:
    """The command line that makes the artifact whose record is ``record`` into folder ``name`` (None: no renderer)."""
    render = _RENDERERS.get(str((record or {}).get("stage")))
    return render(record, name) if render and record else None
