"""The model card (``README.md``) of every mlcompress output, generated from the artifact's own metadata.

Hub metadata in YAML front matter (``base_model`` and ``base_model_relation``, ``language``, ``license``,
``library_name``, ``pipeline_tag``, ``tags``), then: what the model is, the command that made it, vocabulary,
parameters and weight bytes before and after, eval's retention table with its 95% intervals where eval ran, a few
lines per client that loads it, and the licence and citation sections of the source's own card (never its figures).

Everything comes from the files: ``mlcompress.json`` up the provenance chain, ``manifest.json``, the
sentence-transformers layout; nothing is written by hand per model. ``base_model_relation`` takes one of the four
values the Hub documents (adapter, merge, quantized, finetune): ``quantized`` for an export, ``finetune`` for a trim
or a student, which are standalone models derived from the base's weights (neither an adapter nor a merge).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import card_usage as usage
from .clients import auto_class
from .card_command import command_for
from .card_lineage import CARD_FILE, SOURCE_END, SOURCE_START, Step, base_model, chain, source_card
from .measure import figures
from .st_layout import MODULES_FILE, SentenceLayout, read_layout

TAGS = ["mlcompress", "vocabulary-trimming"]
_TASK_TAGS = {"sentence-embedding": "feature-extraction", "token-classification": "token-classification",
              "sequence-classification": "text-classification", "masked-lm": "fill-mask", "text-generation": "text-generation"}
_ARCH_TAGS = (("ForMaskedLM", "fill-mask"), ("ForTokenClassification", "token-classification"),
              ("ForSequenceClassification", "text-classification"), ("ForCausalLM", "text-generation"),
              ("LMHeadModel", "text-generation"), ("ForConditionalGeneration", "text2text-generation"), ("Model", "feature-extraction"))
# how each stage's output relates to what it was made from ({langs}: its languages, {quant}: its quantisation)
_MADE = {"trim": "a vocabulary trim ({langs}) of", "distill-general": "a student distilled ({langs}) from",
         "distill-task": "a task student distilled from", "distill-teacher": "a task fine-tune of",
         "export": "an ONNX export ({quant}) of"}
TRIM_PROMISE = ("The trim keeps every token its target languages' text uses: on text whose tokens are all kept, it gives "
                "the same outputs as the source.")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _pipeline_tag(manifest: dict[str, Any] | None, layout: SentenceLayout | None, config: dict[str, Any]) -> str | None:
    if manifest is not None:
        return _TASK_TAGS.get(str((manifest.get("head") or {}).get("task") or "text-generation"))
    if layout is not None:
        return "sentence-similarity"
    arch = str((config.get("architectures") or [""])[0])
    return next((tag for suffix, tag in _ARCH_TAGS if arch.endswith(suffix)), None)


def front_matter(directory: Path, steps: list[Step], manifest: dict[str, Any] | None,
                 layout: SentenceLayout | None, licence: str | None, languages: list[str]) -> dict[str, Any]:
    """The card's Hub metadata."""
    record = steps[0].record or {}
    meta: dict[str, Any] = {}
    base = base_model(steps)
    if base:
        meta["base_model"] = base
        meta["base_model_relation"] = "quantized" if record.get("stage") == "export" else "finetune"
    if languages:
        meta["language"] = list(languages)
    if licence:
        meta["license"] = licence
    if manifest is not None:
        meta["library_name"] = "transformers.js" if (directory / "config.json").is_file() and (directory / "onnx").is_dir() else "onnx"
    else:
        meta["library_name"] = "sentence-transformers" if layout is not None else "transformers"
    tag = _pipeline_tag(manifest, layout, _read_json(directory / "config.json") or {})
    if tag:
        meta["pipeline_tag"] = tag
    extra = (["sentence-transformers"] if layout is not None else []) + (["onnx"] if manifest is not None else [])
    extra += ["distillation"] if any(str((s.record or {}).get("stage", "")).startswith("distill") for s in steps) else []
    meta["tags"] = TAGS + extra
    return meta


def _number(value: Any, bytes_: bool = False) -> str:
    if not isinstance(value, (int, float)):
        return "—"
    return f"{value / 1e6:,.1f} MB" if bytes_ else f"{value:,}"


def size_table(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Vocabulary, parameters and weight bytes of the source and of this model, with their ratio."""
    rows = ["| | source | this model | ratio |", "| --- | ---: | ---: | ---: |"]
    for key, label in (("vocabulary", "vocabulary"), ("parameters", "parameters"), ("bytes", "weight files")):
        a, b = before.get(key), after.get(key)
        ratio = f"{b / a:.1%}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else "—"
        rows.append(f"| {label} | {_number(a, key == 'bytes')} | {_number(b, key == 'bytes')} | {ratio} |")
    return "\n".join(rows)


def eval_table(evaluation: Mapping[str, Any]) -> str:
    """Eval's scores: source, this model, retention and its 95% paired-bootstrap interval, and the gate's verdict."""
    rows = ["| task | language | metric | source | this model | retention | 95% interval |",
            "| --- | --- | --- | ---: | ---: | ---: | --- |"]
    for s in evaluation.get("scores") or []:
        iv = s.get("interval") or {}
        span = f"{iv['retention_low']:.3f}..{iv['retention_high']:.3f}" if "retention_low" in iv and "retention_high" in iv else "—"
        ret = f"{s['retention']:.3f}" if isinstance(s.get("retention"), (int, float)) else "—"
        rows.append(f"| {s.get('task')} | {s.get('language')} | {s.get('metric')} | {s.get('source', 0):.4f} | "
                    f"{s.get('candidate', 0):.4f} | {ret}{'' if s.get('gated', True) else ' (not gated)'} | {span} |")
    gate = evaluation.get("gate") or {}
    if gate.get("min_retention") is not None:
        verdict = "passed" if gate.get("passed") else "failed"
        rows.append(f"\nGate: every gated score keeps at least {gate['min_retention']} of the source's: **{verdict}** "
                    f"({gate.get('checked', 0)} scores checked).")
    return "\n".join(rows)


def stage_notes(record: dict[str, Any], manifest: dict[str, Any] | None) -> list[str]:
    """A few figures the stage measured: token coverage (trim), the student (distill), quantisation and parity (export)."""
    metrics, params = record.get("metrics") or {}, record.get("parameters") or {}
    notes = []
    if record.get("stage") == "trim" and metrics.get("coverage"):
        notes.append("Corpus tokens kept: " + ", ".join(f"{k} {v:.2%}" for k, v in metrics["coverage"].items()) +
                     (" (held-out estimate: " + ", ".join(f"{k} {v:.2%}" for k, v in metrics["heldout_coverage"].items()) + ")"
                      if metrics.get("heldout_coverage") else "") + ".")
    if str(record.get("stage", "")).startswith("distill") and params.get("layer_map"):
        notes.append(f"Student layers copied from the teacher's {params['layer_map']}; objective {params.get('objective', 'task')}; "
                     f"{metrics.get('steps', '?')} steps.")
    parity = metrics.get("parity") or {}
    if record.get("stage") == "export":
        quant = (manifest or {}).get("quantization", {}).get("name") or params.get("quantize")
        notes.append(f"Quantisation: {quant}." + (f" Parity with PyTorch on target-language text: mean cosine "
                                                  f"{parity['mean_cosine']:.4f}, min {parity['min_cosine']:.4f}."
                                                  if isinstance(parity.get("mean_cosine"), (int, float)) else ""))
    return notes


def usage_sections(directory: Path, name: str, manifest: dict[str, Any] | None, layout: SentenceLayout | None) -> list[str]:
    """How each client loads this artifact (and where another form of it is needed)."""
    if manifest is not None:
        head = manifest.get("head") or {}
        if head.get("task") != "sentence-embedding":
            return [usage.runtime_usage(name, str(head.get("task")))]
        dim = next((o["shape"][-1] for o in manifest.get("outputs") or [] if o.get("name") == head.get("output")), None)
        return usage.bundle_usage(name, directory, manifest, dim)
    if layout is not None:
        return [usage.st_usage(name, layout), usage.onnx_clients_for_folder(name, embedding=True)]
    auto = auto_class(_read_json(directory / "config.json") or {})
    return [usage.transformers_usage(name, auto), usage.onnx_clients_for_folder(name, embedding=False)]


def origin(steps: list[Step], base: str) -> str:
    """What the artifact is, stage by stage down to its source: "an ONNX export (int8) of a vocabulary trim (en, de) of X"."""
    phrases = []
    for step in steps:
        record = step.record or {}
        params = record.get("parameters") or {}
        made = _MADE.get(str(record.get("stage")))
        if made is None:
            break
        phrases.append(made.format(langs=", ".join(params.get("languages") or []) or "its languages",
                                   quant={None: "fp32", "none": "fp32"}.get(params.get("quantize"), params.get("quantize"))).replace(" ()", ""))
    return " ".join(phrases + [f"`{base}`"]) if phrases else f"a model made from `{base}`"


def _source_figures(steps: list[Step]) -> dict[str, Any]:
    root = next((s.path for s in reversed(steps[1:]) if s.path.is_dir()), None)
    return figures(root) if root is not None else {}


def render_card(directory: Path, name: str, evaluation: Mapping[str, Any] | None = None, command: str | None = None) -> str:
    """The card's text for the artifact in ``directory`` (see the module docstring)."""
    import yaml

    steps = chain(directory)
    record = steps[0].record or {}
    manifest = _read_json(directory / "manifest.json")
    manifest = manifest if isinstance(manifest, dict) else None
    layout = read_layout(directory) if manifest is None and (directory / MODULES_FILE).is_file() else None
    licence, carried = source_card(steps)
    params = record.get("parameters") or {}
    languages = params.get("languages") or (manifest or {}).get("languages") or []
    meta = front_matter(directory, steps, manifest, layout, licence, languages)
    base = meta.get("base_model") or str(steps[-1].named_as.get("source") or steps[-1].path.name)
    intro = f"This is {origin(steps, base)}, made with mlcompress." + (f" {TRIM_PROMISE}" if record.get("stage") == "trim" else "")
    root = steps[-1].record or {}
    if root.get("stage") == "bundled":  # a built-in model: say what it was rebuilt from
        note = (root.get("metrics") or {}).get("note")
        intro += f" Its source is `bundled:{(root.get('parameters') or {}).get('name')}`" + (f" (rebuilt by mlcompress: {note})." if note else ".")
    parts = ["---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---", f"# {name}", intro]
    cmd = command or command_for(record, name)
    if cmd:
        parts += ["## How it was made", "```\n" + cmd + "\n```"]
    parts += ["## Size", size_table(_source_figures(steps), figures(directory)), *stage_notes(record, manifest)]
    if evaluation:
        parts += ["## Evaluation", "Retention = this model's score / the source's on the same data, with its 95% "
                                   "paired-bootstrap interval.", eval_table(evaluation)]
    parts += ["## How to use it", *usage_sections(directory, name, manifest, layout)]
    prompts = dict(layout.prompts) if layout is not None else dict((manifest or {}).get("prompts") or {})
    note = usage.prompt_note(prompts)
    parts += [note] if note else []
    if carried:
        parts += ["## From the source's model card", SOURCE_START, carried, SOURCE_END]
    return "\n\n".join(parts) + "\n"


def write_model_card(directory: str | os.PathLike[str], *, name: str | None = None,
                     evaluation: Mapping[str, Any] | None = None, command: str | None = None) -> Path:
    """Write ``README.md`` into the artifact folder ``directory`` (after its ``mlcompress.json``) and return its path.

    ``name``: the folder's final name, used in the card's commands and loading lines (default: the folder's name; pass
    it when writing into a temporary folder that is renamed later). ``evaluation``: eval's result for this model
    (``{"scores": [...], "gate": {...}}``, as eval's report and the pipeline record it), shown as the retention
    table. ``command``: the command that made it (default: the command-line equivalent of its ``mlcompress.json``).
    """
    directory = Path(directory)
    text = render_card(directory, name or directory.name, evaluation, command)
    target = directory / CARD_FILE
    partial = target.with_name(CARD_FILE + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, target)
    return target
