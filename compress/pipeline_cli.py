"""The `mlcompress pipeline` and `mlcompress inspect` commands (mounted by ``register(app)``); imports stay light."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer


def _mb(x: Any) -> str:
    return f"{x / 1e6:,.1f}" if isinstance(x, (int, float)) else "—"


def _num(x: Any, fmt: str = "{:,}") -> str:
    return fmt.format(x) if isinstance(x, (int, float)) else "—"


def register(app: typer.Typer) -> None:
    """Add the `pipeline` and `inspect` commands to the root app."""

    @app.command("pipeline")
    def pipeline_command(
        config: Annotated[Optional[Path], typer.Argument(help="Pipeline config (YAML). Without it: the built-in default job on -l's languages.")] = None,
        languages: Annotated[Optional[str], typer.Option("-l", "--languages", help="Target languages, e.g. en,de (overrides the config's).")] = None,
        output: Annotated[Path, typer.Option("-o", "--output", help="Pipeline folder: one sub-folder per stage, pipeline.json, report.json, report.html. Rerunning into it reuses unchanged stages.")] = Path("mlcompress-out"),
        data: Annotated[Optional[Path], typer.Option("--data", help="A folder laid out like ../shared/data (default: ../shared/data when present).")] = None,
        model: Annotated[Optional[str], typer.Option("--model", help="Source model (default job only; default bundled:multilingual-e5-small).")] = None,
        force: Annotated[bool, typer.Option("--force", help="Rerun every stage even if its inputs and options are unchanged.")] = False,
        max_drop: Annotated[Optional[float], typer.Option(help="Export with accuracy-aware quantisation (stages.export.max_drop): keep the most sensitive operators float until 1 - mean cosine against the float graph is at most this.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    ) -> None:
        """Chain trim -> distill (GPU) -> export (bundle) -> eval against the source; exit 1 when the gate fails."""
        from rich.console import Console
        from rich.table import Table

        from mlcompress.cli import _quiet_transformers
        from mlcompress.errors import InputError
        from mlcompress.eval.retention import gate_error
        from mlcompress.pipeline import Pipeline, default_config, load_config, validate_config

        err = Console(stderr=True, soft_wrap=True)
        out = Console()
        _quiet_transformers()
        if config is None:
            if not languages:
                raise InputError("no config and no languages", "run `mlcompress pipeline -l en,de -o OUT` (the built-in job), or pass a CONFIG.yaml")
            from mlcompress.sources import DEFAULT_MODEL

            pipe = Pipeline(default_config(languages, data, model or DEFAULT_MODEL))
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
            pipe = Pipeline(cfg)
        if max_drop is not None:
            if "export" not in pipe.config["stages"]:
                raise InputError("--max-drop needs an export stage", "add export to the config's stages, or drop --max-drop")
            pipe.config["stages"]["export"]["max_drop"] = max_drop
            pipe = Pipeline(pipe.config)  # validated again with the option
        result = pipe.run(output, force=force, progress=lambda m: err.print(f"[dim]pipeline[/] {m}", highlight=False))
        if as_json:
            out.print_json(json.dumps(result.as_dict(), default=str))
        else:
            table = Table(title=f"mlcompress pipeline -> {result.output}")
            for col in ("stage", "action", "s", "MB", "parameters", "vocab", "ms p50", "min retention"):
                table.add_column(col, justify="left" if col in ("stage", "action", "min retention") else "right")
            rows = {r["stage"]: r for r in result.report.get("artifacts", [])}
            src = rows.get("source", {})
            table.add_row("source", "", "", _mb(src.get("bytes")), _num(src.get("parameters")), _num(src.get("vocab_size")),
                          _num(src.get("latency_ms_p50"), "{:.2f}"), "")
            for s in result.stages:
                r = rows.get(s["name"], {})
                ret = ", ".join(f"{t} {v:.3f}" for t, v in (r.get("retention") or {}).items())
                table.add_row(s["name"], s.get("action", ""), _num(s.get("seconds"), "{:.1f}"), _mb(r.get("bytes")),
                              _num(r.get("parameters")), _num(r.get("vocab_size")), _num(r.get("latency_ms_p50"), "{:.2f}"), ret)
            out.print(table)
            for s in result.stages:
                if s.get("note"):
                    out.print(f"  note: {s['name']}: {s['note']}")
            verdict = {True: "[green]PASSED[/]", False: "[red]FAILED[/]", None: "no gate"}[result.passed]
            g = result.gate
            out.print(f"gate: {verdict}" + (f" (min retention {g['min_retention']}, {g.get('checked', 0)} scores checked)" if g.get("min_retention") else ""))
            out.print(f"report: {result.output / 'report.json'}  {result.output / 'report.html'}")
        if result.passed is False:
            raise gate_error(result.gate, str(result.output))

    @app.command("inspect")
    def inspect_command(
        path: Annotated[Path, typer.Argument(help="A model directory, an export bundle, an eval report folder or a pipeline folder.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print everything as JSON.")] = False,
    ) -> None:
        """What an artifact is (type, vocabulary, parameters, bytes, languages), where it came from, and what was measured on it."""
        from rich.console import Console
        from rich.table import Table

        from mlcompress.inspect import inspect

        out = Console()
        info = inspect(path)
        if as_json:
            out.print_json(json.dumps(info, default=str))
            return
        table = Table(title=f"{info['kind']}: {info['path']}", show_header=False)
        table.add_column("", style="bold")
        table.add_column("")
        fields = [("stage", info.get("stage")), ("model type", info.get("model_type")), ("task", info.get("task")),
                  ("layers", info.get("layers")), ("hidden", info.get("hidden")), ("vocabulary", _num(info.get("vocab_size"))),
                  ("parameters", _num(info.get("parameters"))), ("bytes on disk", _num(info.get("bytes"))),
                  ("weight bytes", _num(info.get("weight_bytes"))), ("quantization", info.get("quantization")),
                  ("languages", ", ".join(info["languages"]) if isinstance(info.get("languages"), list) else info.get("languages")),
                  ("source", info.get("source"))]
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
        for k, v in fields:
            if v not in (None, "", "—"):
                table.add_row(k, str(v))
        out.print(table)
        metrics = info.get("metrics") or {}
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        if scalars:
            mt = Table(title="measured (mlcompress.json metrics)")
            mt.add_column("metric")
            mt.add_column("value", justify="right")
            for k, v in scalars.items():
                mt.add_row(k, f"{v:,.4g}" if isinstance(v, float) else (f"{v:,}" if isinstance(v, int) else v))
            out.print(mt)
        if info.get("kind") == "pipeline":
            st = Table(title="stages")
            for col in ("stage", "kind", "MB", "parameters", "vocab", "ms p50", "min retention", "path"):
                st.add_column(col)
            for r in info.get("artifacts") or []:
                st.add_row(r["stage"], str(r.get("kind")), _mb(r.get("bytes")), _num(r.get("parameters")), _num(r.get("vocab_size")),
                           _num(r.get("latency_ms_p50"), "{:.2f}"), ", ".join(f"{t} {v:.3f}" for t, v in (r.get("retention") or {}).items()),
                           r["path"])
            out.print(st)
        chain = info.get("provenance") or []
        if chain:
            ct = Table(title="provenance (newest first)")
            for col in ("#", "stage", "path", "created"):
                ct.add_column(col)
            for i, step in enumerate(chain):
                ct.add_row(str(i), str(step.get("stage")), str(step.get("source") or step.get("path")), str(step.get("created") or ""))
            out.print(ct)
