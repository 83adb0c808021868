"""CLI of the eval stage: `mlcompress eval SOURCE CANDIDATE -l de,el --tasks ... --data DIR -o REPORT_DIR [--min-retention 0.97]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

_TASKS = "retrieval,pos,nli,sts,fidelity,efficiency"
_LM_TASKS = "perplexity,next_token,greedy,efficiency"
_SEQ2SEQ_TASKS = "perplexity,next_token,greedy,translation"


def _parse_hub(items: list[str]) -> dict[str, str]:
    from mlcompress.errors import InputError

    out = {}
    for item in items:
        key, sep, spec = item.partition("=")
        if not sep or ":" not in key:
            raise InputError(f"bad --hub-data {item!r}",
                             "write TASK:LANG=hf://NAME?config=C&split=S&columns=COL1,COL2, e.g. retrieval:de=hf://...")
        out[key.strip()] = spec.strip()
    return out


def _parse_task_languages(items: list[str]) -> dict[str, str]:
    from mlcompress.errors import InputError

    out = {}
    for item in items:
        task, sep, langs = item.partition("=")
        if not sep or not langs.strip():
            raise InputError(f"bad --task-languages {item!r}", "write TASK=LANGS, e.g. --task-languages sts=ar,es,en")
        out[task.strip()] = langs.strip()
    return out


def _lm_efficiency_line(e: dict) -> str:
    """One line of a causal-LM comparison's efficiency: parameters, prefill ms, decode tokens/s."""
    s, c = e["source"], e["candidate"]
    tps = lambda v: f"{v:.1f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
    return (f"efficiency ({s.get('device')}, batch 1, both timed in {s.get('rounds')} interleaved rounds): parameters "
            f"{s['parameters'] or 0:,} -> {c['parameters'] or 0:,}; prefill of {e['prefill_tokens']} tokens p50 "
            f"{s['prefill_ms_p50']:.2f} -> {c['prefill_ms_p50']:.2f} ms; decode {tps(s.get('decode_tokens_per_s'))} -> "
            f"{tps(c.get('decode_tokens_per_s'))} tokens/s")


def register(app: typer.Typer) -> None:
    """Add the `eval` command to the root app."""

    @app.command("eval")
    def eval_command(
        source: Annotated[str, typer.Argument(help="Source model: a save_pretrained directory, a Hub id, bundled:multilingual-e5-small, or an export bundle.")],
        candidate: Annotated[str, typer.Argument(help="Compressed model, in any of the same forms.")],
        languages: Annotated[str, typer.Option("-l", "--languages", help="Target languages, e.g. de,el.")],
        output: Annotated[Path, typer.Option("-o", "--output", help="Report folder (report.json, report.md, report.html).")],
        tasks: Annotated[Optional[str], typer.Option("--tasks", help=f"Comma-separated: for encoders from {_TASKS} (default: all); for a causal-LM source from {_LM_TASKS} (default: all); for an encoder-decoder from {_SEQ2SEQ_TASKS} (default: all; translation, chrF and BLEU through sacrebleu, for a model with language codes).")] = None,
        data: Annotated[Optional[Path], typer.Option("--data", help="A folder laid out like ../shared/data (default: $MLCOMPRESS_DATA, else ../shared/data where present).")] = None,
        min_retention: Annotated[Optional[float], typer.Option("--min-retention", help="Gate: exit 1 when any task keeps less than this fraction of the source's score.")] = None,
        hub_data: Annotated[Optional[list[str]], typer.Option("--hub-data", help="TASK:LANG=hf://NAME?config=C&split=S&columns=A,B: a datasets id for one task and language. Repeatable.")] = None,
        task_languages: Annotated[Optional[list[str]], typer.Option("--task-languages", help="TASK=LANGS: other languages for one task, e.g. sts=ar,es,en. Repeatable.")] = None,
        transfer: Annotated[str, typer.Option(help="Transfer recipe: probe (frozen encoder), finetune, or auto (finetune on a GPU).")] = "auto",
        prefix: Annotated[Optional[str], typer.Option(help="Text put before each embedded sentence (default: 'query: ' for E5 models).")] = None,
        seed: Annotated[int, typer.Option(help="Seed of the transfer recipe (the same for both models).")] = 0,
        max_examples: Annotated[Optional[int], typer.Option(help="Cap every task's sentence, pair and row counts at N (a quick run).")] = None,
        overwrite: Annotated[bool, typer.Option(help="Replace the report folder if it exists.")] = False,
        cache_dir: Annotated[Optional[Path], typer.Option(help="Cache for bundled models.")] = None,
    ) -> None:
        """Compare CANDIDATE with SOURCE per task and language; write reports; with --min-retention, a gate (exit 1)."""
        from rich.console import Console
        from rich.table import Table

        from mlcompress.artifacts import quiet_transformers as _quiet_transformers
        from mlcompress.eval import Limits, LMLimits, Seq2SeqLimits, evaluate
        from mlcompress.eval.retention import gate_error

        err = Console(stderr=True, soft_wrap=True)
        _quiet_transformers()
        report = evaluate(source, candidate, languages, tasks, data, output, min_retention, overwrite=overwrite,
                          task_languages=_parse_task_languages(task_languages or []), hub_data=_parse_hub(hub_data or []),
                          transfer=transfer, prefix=prefix, seed=seed, cache_dir=cache_dir,
                          limits=Limits().capped(max_examples) if max_examples else None,
                          lm_limits=LMLimits().capped(max_examples) if max_examples else None,
                          seq2seq_limits=Seq2SeqLimits().capped(max_examples) if max_examples else None,
                          progress=lambda msg: err.print(f"[dim]{msg}[/]", highlight=False))
        out = Console()
        table = Table(title=f"{candidate} against {source}")
        for col in ("task", "language", "metric", "source", "candidate", "retention"):
            table.add_column(col, justify="right" if col in ("source", "candidate", "retention") else "left")
        bar = report.gate.get("min_retention")
        for s in report.scores:
            ret = "-" if s.retention is None else f"{s.retention:.4f}"
            if bar is not None and s.gated and s.retention is not None and s.retention < bar:
                ret = f"[bold red]{ret}[/]"
            table.add_row(s.task, s.language, s.metric, f"{s.source:.4f}", f"{s.candidate:.4f}", ret)
        out.print(table)
        if report.efficiency and report.efficiency.get("kind") == "generative":
            out.print(_lm_efficiency_line(report.efficiency))
        elif report.efficiency:
            e = report.efficiency
            from mlcompress.eval.report import latency_spread

            rounds = e["source"].get("rounds")
            out.print(f"efficiency ({e['source']['device']}, both timed in {rounds} interleaved rounds): parameters "
                      f"{e['source']['parameters']:,} -> {e['candidate']['parameters']:,}; batch-1 p50 "
                      f"{e['source']['latency_ms_p50']:.2f} ({latency_spread(e['source'])}) -> "
                      f"{e['candidate']['latency_ms_p50']:.2f} ({latency_spread(e['candidate'])}) ms; "
                      f"throughput {e['source']['throughput_per_s']:.0f} -> {e['candidate']['throughput_per_s']:.0f}/s")
        for s in report.skipped:
            out.print(f"[dim]skipped {s['task']} {s['language']}: {s['reason']}[/]")
        out.print(f"report: {report.output / 'report.html'}")
        if report.passed is False:
            raise gate_error(report.gate, str(report.output))
        if report.passed:
            out.print(f"[green]gate passed[/]: every gated score keeps at least {bar} of the source's")
