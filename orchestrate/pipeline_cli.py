"""The `mlcompress pipeline` and `mlcompress inspect` commands (mounted by ``register(app)``); imports stay light."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mlcompress.artifacts import format_mb, format_number


def _retentions(r: dict[str, Any]) -> str:
    return ", ".join(f"{t} {v:.3f}" for t, v in (r.get("retention") or {}).items())


# ---- pipeline ---------------------------------------------------------------------------------------------------------


def _pipeline_of(config: Path | None, languages: str | None, data: Path | None, model: str | None, max_drop: float | None,
                 distill: bool | None = None, distill_budget: str | None = None) -> Any:
    """The Pipeline the command line asks for: the config file (with -l, --data, --model, --distill over it) or the
    built-in job."""
    from mlcompress.errors import InputError
    from mlcompress.sources import DEFAULT_MODEL

    from .config import default_config, load_config, validate_config
    from .runner import Pipeline

    if config is None:
        if not languages:
            raise InputError("no config and no languages", "run `mlcompress pipeline -l en,de -o OUT` (the built-in job), or pass a CONFIG.yaml")
        pipe = Pipeline(default_config(languages, data, model or DEFAULT_MODEL), distill=distill, distill_budget=distill_budget)
    else:
        cfg = load_config(config)
        if languages:
            cfg["languages"] = languages
        if data is not None:
            cfg["data"] = str(data.expanduser().absolute())
        if model:
            cfg["source"] = model
        if languages or data is not None or model:
            stages = {k: v for k, v in cfg["stages"].items()}
            cfg = validate_config({**cfg, "stages": stages})
        pipe = Pipeline(cfg, distill=distill, distill_budget=distill_budget)
    if max_drop is not None:
        if "export" not in pipe.config["stages"]:
            raise InputError("--max-drop needs an export stage", "add export to the config's stages, or drop --max-drop")
        pipe.config["stages"]["export"]["max_drop"] = max_drop
        pipe = Pipeline(pipe.config)  # validated again with the option
    return pipe


def compact(n: Any) -> str:
    """A count in at most 6 characters (117.7M, 36.6k, 512), so that tables fit 80 columns; '—' for no number."""
    if not isinstance(n, (int, float)):
        return "—"
    for least, scale, unit in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if abs(n) >= least:
            return f"{n / scale:.1f}{unit}"
    return f"{n:,.0f}" if isinstance(n, int) or n == int(n) else f"{n:.3g}"


def latency_spread(fig: dict[str, Any]) -> str:
    """min..max of a model's per-round median batch-1 latency in ms ('—' where it was not timed in rounds)."""
    low, high = fig.get("latency_ms_p50_min"), fig.get("latency_ms_p50_max")
    return f"{low:.2f}..{high:.2f}" if isinstance(low, (int, float)) and isinstance(high, (int, float)) else "—"


def _efficiencies(result: Any) -> dict[str, dict[str, Any]]:
    """Per evaluated artifact, the efficiency entry its eval recorded (source and candidate timed in the same rounds)."""
    ev = next((s for s in result.stages if s.get("name") == "eval"), None) or {}
    results = (ev.get("metrics") or {}).get("results") or {}
    return {name: r["efficiency"] for name, r in results.items() if r.get("efficiency")}


def _stage_table(result: Any, rows: dict[str, dict[str, Any]]) -> Any:
    """What each stage did and took, and the size of what it made."""
    from rich.table import Table

    table = Table(title="mlcompress pipeline")
    for col in ("stage", "action", "s", "MB", "params", "vocab"):
        table.add_column(col, justify="left" if col in ("stage", "action") else "right", no_wrap=True)
    src = rows.get("source", {})
    table.add_row("source", "", "", format_mb(src.get("bytes")), compact(src.get("parameters")), compact(src.get("vocab_size")))
    for s in result.stages:
        r = rows.get(s["name"], {})
        table.add_row(s["name"], s.get("action", ""), format_number(s.get("seconds"), "{:.1f}"), format_mb(r.get("bytes")),
                      compact(r.get("parameters")), compact(r.get("vocab_size")))
    return table


def _speed_table(effs: dict[str, dict[str, Any]]) -> Any:
    """Batch-1 latency with its spread over the rounds and batch-32 throughput, each candidate against the source
    it was timed with; None when nothing was timed."""
    from rich.table import Table

    if not effs:
        return None
    if any(e.get("kind") == "generative" for e in effs.values()):
        return _generation_speed_table(effs)
    table = Table(title="speed: interleaved rounds with the source",
                  caption="ms: batch 1, p50; rounds: min..max; sent/s: batch 32")
    for col in ("model", "ms p50", "rounds", "x source", "sent/s"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    first = next(iter(effs.values()))["source"]
    one_run = all(e["source"] == first for e in effs.values())  # one measurement: the same source figures
    rows = [("source", first, 1.0)] if one_run else []
    for name, e in effs.items():
        paired = e.get("latency_ratio_per_round") or {}
        ratio = paired.get("median", (e.get("candidate_over_source") or {}).get("latency_ms_p50"))
        rows += ([] if one_run else [(f"source ({name} run)", e["source"], 1.0)]) + [(name, e["candidate"], ratio)]
    for name, fig, ratio in rows:
        table.add_row(name, format_number(fig.get("latency_ms_p50"), "{:.2f}"), latency_spread(fig),
                      format_number(ratio, "{:.3f}"), format_number(fig.get("throughput_per_s"), "{:.0f}"))
    return table


def _generation_speed_table(effs: dict[str, dict[str, Any]]) -> Any:
    """A decoder's speed: prefill ms of a fixed prompt and decode tokens/s at batch 1, with their spread over the
    rounds, each candidate beside the source of its own measurement."""
    from rich.table import Table

    def spread(fig: dict[str, Any], key: str, fmt: str) -> str:
        low, high = fig.get(f"{key}_min"), fig.get(f"{key}_max")
        return f"{fmt.format(low)}..{fmt.format(high)}" if isinstance(low, (int, float)) and isinstance(high, (int, float)) else "—"

    table = Table(title="speed: interleaved rounds with the source",
                  caption="batch 1; prefill: p50 ms; decode: tokens/s (rounds: min..max)")
    for col in ("model", "prefill", "decode", "rounds", "x source"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for name, e in effs.items():
        src, cand = e.get("source") or {}, e.get("candidate") or {}
        for label, fig in ((f"source ({name})", src), (name, cand)):
            tps, base = fig.get("decode_tokens_per_s"), src.get("decode_tokens_per_s")
            ratio = tps / base if isinstance(tps, (int, float)) and isinstance(base, (int, float)) and base else None
            table.add_row(label, format_number(fig.get("prefill_ms_p50"), "{:.1f}"), format_number(tps, "{:.1f}"),
                          spread(fig, "decode_tokens_per_s", "{:.1f}"), format_number(ratio, "{:.2f}"))
    return table


def _retention_table(rows: dict[str, dict[str, Any]]) -> Any:
    """Minimum retention per task (rows) of each evaluated artifact (columns); None when nothing was evaluated."""
    from rich.table import Table

    evaluated = {name: r["retention"] for name, r in rows.items() if r.get("retention")}
    if not evaluated:
        return None
    table = Table(title="min retention per task")
    table.add_column("task", no_wrap=True)
    for name in evaluated:
        table.add_column(name, justify="right", no_wrap=True)
    for task in dict.fromkeys(t for ret in evaluated.values() for t in ret):
        table.add_row(task, *(format_number(ret.get(task), "{:.3f}") for ret in evaluated.values()))
    return table


def _student_table(cmp: dict[str, Any] | None) -> Any:
    """Per eval score the student gives, its score and retention beside the trimmed model's (None: no student); the
    scores only the trimmed model gives (an MLM head's, say) are counted in the caption and listed in report.json."""
    from rich.table import Table

    if not cmp:
        return None
    shown = [r for r in cmp["rows"] if r["student"] is not None]
    pairs = [(r["task"], r["language"]) for r in shown]
    speed = f"; batch-1 (PyTorch): {cmp['student_speedup']:.2f}x the trim's speed" if cmp.get("student_speedup") else ""
    trim_only = len(cmp["rows"]) - len(shown)
    extra = f"; {trim_only} more score(s) of the trim alone in report.json" if trim_only else ""
    table = Table(title=f"student ({cmp['student']}) vs trim",
                  caption=f"ret: score / source's; Δ: student - trim; *: not gated{speed}{extra}")
    for col in ("task", "language", "source", "trim", "ret", "student", "ret", "Δ"):
        table.add_column(col, justify="left" if col in ("task", "language") else "right", no_wrap=True)
    for r in shown:
        task = str(r["task"]) + (f" {r['metric']}" if pairs.count((r["task"], r["language"])) > 1 else "")
        table.add_row(task, str(r["language"]) + ("" if r["gated"] else "*"),
                      *(format_number(r[k], "{:.3f}") for k in ("source", "trim", "trim_retention", "student",
                                                                 "student_retention", "retention_change")))
    gates = {True: "passed", False: "failed", None: "—"}
    table.add_row("gate", "", "", "", gates[cmp["gate"]["trim"]], "", gates[cmp["gate"]["student"]], "")
    return table


def _print_pipeline_result(result: Any, console: Any = None) -> None:
    """Per stage: what was done, its time and size; speed and retention per model; the gate; the reports (80 columns)."""
    from rich.console import Console

    out = console or Console()
    rows = {r["stage"]: r for r in result.report.get("artifacts", [])}
    tables = (_stage_table(result, rows), _speed_table(_efficiencies(result)), _retention_table(rows),
              _student_table(result.report.get("student_vs_trim")))
    for table in tables:
        if table is not None:
            out.print(table)
    for s in result.stages:
        if s.get("note"):
            out.print(f"  note: {s['name']}: {s['note']}")
    verdict = {True: "[green]PASSED[/]", False: "[red]FAILED[/]", None: "no gate"}[result.passed]
    g = result.gate
    out.print(f"gate: {verdict}" + (f" (min retention {g['min_retention']}, {g.get('checked', 0)} scores checked)" if g.get("min_retention") else ""))
    out.print(f"report: {result.output / 'report.json'}")
    out.print(f"        {result.output / 'report.html'}")


def pipeline_command(
    config: Annotated[Optional[Path], typer.Argument(help="Pipeline config (YAML). Without it: the built-in default job on -l's languages.")] = None,
    languages: Annotated[Optional[str], typer.Option("-l", "--languages", help="Target languages, e.g. en,de (overrides the config's).")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Pipeline folder: one sub-folder per stage, pipeline.json, report.json, report.html. Rerunning into it reuses unchanged stages.")] = Path("mlcompress-out"),
    data: Annotated[Optional[Path], typer.Option("--data", help="A folder laid out like ../shared/data (default: $MLCOMPRESS_DATA, or ../shared/data when present; with neither, the built-in job trims on wordfreq's word lists and evaluates on the Tatoeba sample in the package: retrieval, fidelity, efficiency).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Source model (default job only; default bundled:multilingual-e5-small).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rerun every stage even if its inputs and options are unchanged.")] = False,
    distill: Annotated[Optional[bool], typer.Option("--distill/--no-distill", help="Distil a student from the trimmed model (stages.distill.enabled), on a CPU too; --no-distill never distils. Default: the config's (the built-in job distils when a CUDA GPU is present).")] = None,
    distill_budget: Annotated[Optional[str], typer.Option("--distill-budget", help="Distil within this time, e.g. 30m, 1h30m, 900s (stages.distill.time_budget; implies --distill).")] = None,
    max_drop: Annotated[Optional[float], typer.Option(help="Export with accuracy-aware quantisation (stages.export.max_drop): keep the most sensitive operators float until 1 - mean cosine against the float graph is at most this.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Chain trim -> distill (GPU) -> export (bundle) -> eval against the source; exit 1 when the gate fails."""
    from rich.console import Console

    from mlcompress.artifacts import quiet_transformers
    from mlcompress.eval import gate_error

    err = Console(stderr=True, soft_wrap=True)
    quiet_transformers()
    pipe = _pipeline_of(config, languages, data, model, max_drop, distill, distill_budget)
    result = pipe.run(output, force=force, progress=lambda m: err.print(f"[dim]pipeline[/] {m}", highlight=False))
    if as_json:
        Console().print_json(json.dumps(result.as_dict(), default=str))
    else:
        _print_pipeline_result(result)
    if result.passed is False:
        raise gate_error(result.gate, str(result.output))


# ---- inspect ----------------------------------------------------------------------------------------------------------


def _inspect_fields(info: dict[str, Any]) -> list[tuple[str, Any]]:
    """The (label, value) rows of an artifact's summary table."""
    num = format_number
    fields = [("stage", info.get("stage")), ("model type", info.get("model_type")), ("task", info.get("task")),
              ("layers", info.get("layers")), ("hidden", info.get("hidden")), ("vocabulary", num(info.get("vocab_size"))),
              ("parameters", num(info.get("parameters"))), ("bytes on disk", num(info.get("bytes"))),
              ("weight bytes", num(info.get("weight_bytes"))), ("quantization", info.get("quantization")),
              ("languages", ", ".join(info["languages"]) if isinstance(info.get("languages"), list) else info.get("languages")),
              ("source", info.get("source"))]
    if info.get("forms"):
        fields.append(("other forms", ", ".join(f"{name} ({num(size)} bytes)" for name, size in info["forms"].items())))
    if info.get("seq2seq"):
        fields += _seq2seq_fields(info["seq2seq"])
    if info.get("parity"):
        fields.append(("parity", ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in info["parity"].items()
                                           if isinstance(v, (int, float, str)))))
    if info.get("latency_ms"):
        fields.append(("latency ms", ", ".join(f"{k} {v:.2f}" for k, v in info["latency_ms"].items() if isinstance(v, (int, float)))))
    if info.get("heldout_coverage"):
        fields.append(("held-out coverage (est.)", ", ".join(f"{k} {v:.2%}" for k, v in info["heldout_coverage"].items())))
    if info.get("gate"):
        fields.append(("gate", f"passed={info['gate'].get('passed')} min_retention={info['gate'].get('min_retention')}"))
    if info.get("passed") is not None:
        fields.append(("verdict", "PASSED" if info["passed"] else "FAILED"))
    loaded_by = [c["client"] for c in info.get("clients") or [] if c["loads"] and "stage" not in c]
    if loaded_by:
        fields.append(("loaded by", ", ".join(loaded_by)))
    return fields


def _seq2seq_fields(s2s: dict[str, Any]) -> list[tuple[str, Any]]:
    """An encoder-decoder bundle's rows: each dtype's encoder and decoder (the default first), the target-language
    codes and the forced first token."""
    default = s2s.get("default_dtype")
    rows = [(f"graphs {dtype}" + (" (default)" if dtype == default else ""),
             ", ".join(f"{part} {g['file']} ({format_number(g['bytes'])} bytes)" for part, g in parts.items()))
            for dtype, parts in sorted((s2s.get("graphs") or {}).items(), key=lambda kv: kv[0] != default)]
    codes = s2s.get("language_codes") or {}
    rows.append(("target languages", ", ".join(f"{lang} ({c.get('token')})" for lang, c in codes.items()) or
                 "none (no language-code tokens: the task goes in the input text)"))
    forced, token = s2s.get("forced_bos_token_id"), s2s.get("forced_bos_token")
    rows.append(("forced BOS", "none" if forced is None else f"{forced} ({token})" if token else str(forced)))
    return rows


def _inspect_tables(info: dict[str, Any]) -> list[Any]:
    """The tables after the summary: measured metrics, a pipeline's stages (and its student against the trim), the
    provenance chain (where there are any)."""
    from rich.table import Table

    tables = []
    metrics = info.get("metrics") or {}
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    if scalars:
        mt = Table(title="measured (mlcompress.json metrics)")
        mt.add_column("metric")
        mt.add_column("value", justify="right")
        for k, v in scalars.items():
            mt.add_row(k, f"{v:,.4g}" if isinstance(v, float) else (f"{v:,}" if isinstance(v, int) else v))
        tables.append(mt)
    if info.get("kind") == "pipeline":
        st = Table(title="stages")
        for col in ("stage", "kind", "MB", "parameters", "vocab", "ms p50", "min retention", "path"):
            st.add_column(col)
        for r in info.get("artifacts") or []:
            st.add_row(r["stage"], str(r.get("kind")), format_mb(r.get("bytes")), format_number(r.get("parameters")),
                       format_number(r.get("vocab_size")), format_number(r.get("latency_ms_p50"), "{:.2f}"), _retentions(r), r["path"])
        tables.append(st)
        student = _student_table(info.get("student_vs_trim"))
        if student is not None:
            tables.append(student)
    if info.get("clients"):
        tables.append(_clients_table(info["clients"]))
    chain = info.get("provenance") or []
    if chain:
        ct = Table(title="provenance (newest first)")
        for col in ("#", "stage", "path", "created"):
            ct.add_column(col)
        for i, step in enumerate(chain):
            ct.add_row(str(i), str(step.get("stage")), str(step.get("source") or step.get("path")), str(step.get("created") or ""))
        tables.append(ct)
    return tables


def _clients_table(entries: list[dict[str, Any]]) -> Any:
    """Which clients load the artifact and how, those that do not and why; a pipeline's: which load each stage's."""
    from rich.table import Table

    if any("stage" in e for e in entries):
        table = Table(title="clients that load each stage's output (mlcompress inspect OUT/<stage> says how)")
        table.add_column("stage")
        table.add_column("loaded by")
        for stage in dict.fromkeys(e["stage"] for e in entries):
            table.add_row(str(stage), ", ".join(e["client"] for e in entries if e["stage"] == stage and e["loads"]) or "—")
        return table
    table = Table(title="clients (DIR: this folder)")
    for col in ("client", "loads", "how / why not"):
        table.add_column(col, overflow="fold")
    for e in entries:
        table.add_row(e["client"], "yes" if e["loads"] else "no", e["how"])
    return table


def inspect_command(
    path: Annotated[Path, typer.Argument(help="A model directory, an export bundle, an eval report folder or a pipeline folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print everything as JSON.")] = False,
) -> None:
    """What an artifact is (type, vocabulary, parameters, bytes, languages), where it came from, and what was measured on it."""
    from rich.console import Console
    from rich.table import Table

    from .inspect import inspect

    out = Console()
    info = inspect(path)
    if as_json:
        out.print_json(json.dumps(info, default=str))
        return
    table = Table(title=f"{info['kind']}: {info['path']}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for k, v in _inspect_fields(info):
        if v not in (None, "", "—"):
            table.add_row(k, str(v))
    out.print(table)
    for t in _inspect_tables(info):
        out.print(t)


def register(app: typer.Typer) -> None:
    """Add the `pipeline` and `inspect` commands to the root app."""
    app.command("pipeline")(pipeline_command)
    app.command("inspect")(inspect_command)
