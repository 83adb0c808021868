"""Reports: report.json (every score, retention and the gate's verdict), report.md, and a self-contained report.html."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcompress.artifacts import atomic_output_dir, format_mb, format_number, write_provenance

from . import lm_report

if TYPE_CHECKING:
    from .run import EvalReport


def _mb(n: Any) -> str:
    return format_mb(n, " MB", "-")


def _fmt(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) else "-"


def latency_spread(figures: dict[str, Any], digits: int = 2) -> str:
    """The spread of a model's batch-1 latency: min..max of its per-round medians in ms ('-' where not measured)."""
    low, high = figures.get("latency_ms_p50_min"), figures.get("latency_ms_p50_max")
    if not (isinstance(low, (int, float)) and isinstance(high, (int, float))):
        return "-"
    return f"{low:.{digits}f}..{high:.{digits}f}"


def _interval(s: Any) -> str:
    """The 95% retention interval of a score, or '-' without one."""
    i = s.interval or {}
    low, high = i.get("retention_low"), i.get("retention_high")
    return f"{low:.3f}..{high:.3f}" if isinstance(low, float) and isinstance(high, float) and low == low else "-"


def _rule(report: EvalReport) -> str:
    from .retention import GATE_RULE

    return report.gate.get("rule") or GATE_RULE


def _verdict(report: EvalReport) -> str:
    g = report.gate
    if g.get("passed") is None:
        return "no gate (pass --min-retention to make this a gate)"
    if g["passed"]:
        return f"PASSED: all {g['checked']} gated scores keep at least {g['min_retention']} of the source's"
    return f"FAILED: {len(g['failures'])} of {g['checked']} gated scores below {g['min_retention']}"


def write_markdown(report: EvalReport) -> str:
    """The Markdown report."""
    d = report.as_dict()
    lines = [f"# mlcompress eval: {report.candidate['spec']} against {report.source['spec']}", "",
             f"**Gate: {_verdict(report)}**", "",
             f"Languages: {', '.join(report.languages)}; tasks: {', '.join(report.tasks)}; " + (
                 lm_report.header(report) if lm_report.is_generative(report) else
                 f"transfer recipe: {report.parameters['transfer']} (seed {report.parameters['seed']}); "
                 f"sentence prefix: {report.parameters['prefix']!r}"), "",
             f"Gate rule: {_rule(report)}.", "",
             "| task | language | metric | source | candidate | retention | 95% interval | gated | n | data |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | --- |"]
    for s in report.scores:
        lines.append(f"| {s.task} | {s.language} | {s.metric} | {_fmt(s.source)} | {_fmt(s.candidate)} | "
                     f"{_fmt(s.retention)} | {_interval(s)} | {'yes' if s.gated else 'no'} | {s.n} | "
                     f"{Path(s.dataset).name if s.dataset else ''} |")
    if d["summary"]:
        lines += ["", "## Retention per task", "", "| task | mean | min | scores |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {t} | {v['mean_retention']:.4f} | {v['min_retention']:.4f} | {v['scores']} |" for t, v in d["summary"].items()]
    if report.gate.get("failures"):
        lines += ["", "## Below the bar", ""]
        lines += [f"- {f['task']} {f['language']} {f['metric']}: retention {f['retention']:.4f}" for f in report.gate["failures"]]
    if report.efficiency and report.efficiency.get("kind") == "generative":
        lines += lm_report.efficiency_markdown(report.efficiency)
    elif report.efficiency:
        e = report.efficiency
        lines += ["", f"## Efficiency ({e['source']['device']})", "", "| | source | candidate | candidate / source |",
                  "| --- | ---: | ---: | ---: |"]
        for key, fmt in (("parameters", lambda v: f"{v:,}"), ("bytes_on_disk", _mb), ("weight_file_bytes", _mb),
                         ("latency_ms_p50", lambda v: f"{v:.2f} ms"), ("latency_ms_p95", lambda v: f"{v:.2f} ms"),
                         ("throughput_per_s", lambda v: f"{v:.1f} /s (batch {e['source']['throughput_batch']})"),
                         ("peak_memory_bytes", _mb)):
            a, b = e["source"].get(key), e["candidate"].get(key)
            r = e["candidate_over_source"].get(key)
            lines.append(f"| {key} | {fmt(a) if a is not None else '-'} | {fmt(b) if b is not None else '-'} | {_fmt(r, 3)} |")
        paired = e.get("latency_ratio_per_round") or {}
        lines.append(f"| latency_ms_p50 of the rounds (min..max) | {latency_spread(e['source'])} | {latency_spread(e['candidate'])} | "
                     f"{_fmt(paired.get('min'), 3)}..{_fmt(paired.get('max'), 3)} |")
        lines.append(f"\nPeak memory: {e['source']['peak_memory_kind']}.")
        if e["source"].get("method"):
            lines.append(f"\nTiming: {e['source']['method']}. Candidate / source per round: median {_fmt(paired.get('median'), 3)}.")
    lines += lm_report.examples_markdown(report)
    if report.skipped:
        lines += ["", "## Skipped", ""] + [f"- {s['task']} {s['language']}: {s['reason']}" for s in report.skipped]
    notes = [s for s in report.scores if s.note]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {s.task} {s.language} {s.metric}: {s.note}" for s in notes]
    lines += ["", "## Models", "", f"- source: `{json.dumps(report.source, default=str)}`",
              f"- candidate: `{json.dumps(report.candidate, default=str)}`", ""]
    return "\n".join(lines)


def _png(fig: Any, dpi: int = 110) -> str:
    """A matplotlib figure as a base64 PNG (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plots(report: EvalReport) -> dict[str, str]:
    """Base64 PNGs: retention per task and language, size against retention, latency bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    bar = report.gate.get("min_retention")
    rows = [s for s in report.scores if s.retention is not None]
    if rows:
        fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.2))
        labels = [f"{s.task} {s.language} {s.metric}" for s in rows]
        colors = ["#9aa5b1" if not s.gated else ("#d64545" if bar and s.retention < bar else "#3b8e5a") for s in rows]
        def err(s: Any, end: str) -> float:
            v = (s.interval or {}).get(f"retention_{end}")
            return abs(s.retention - v) if isinstance(v, float) and v == v else 0.0

        ax.barh(range(len(rows)), [s.retention for s in rows], color=colors,
                xerr=[[err(s, "low") for s in rows], [err(s, "high") for s in rows]], ecolor="#333", capsize=2)
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", lw=0.8)
        if bar:
            ax.axvline(bar, color="#d64545", ls="--", lw=1, label=f"--min-retention {bar}")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel("retention (candidate / source)")
        ax.set_xlim(0, max(1.1, max(s.retention for s in rows) * 1.05))
        ax.set_title("Retention per task and language, 95% intervals (grey: not gated)")
        out["retention"] = _png(fig)
    src_size = report.source.get("size", {}).get("bytes_on_disk")
    cand_size = report.candidate.get("size", {}).get("bytes_on_disk")
    gated = [s for s in rows if s.gated]
    if src_size and cand_size and gated:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter([src_size / 1e6], [1.0], s=80, color="#333", label="source", zorder=3)
        tasks = list(dict.fromkeys(s.task for s in gated))
        for i, task in enumerate(tasks):
            vals = [s.retention for s in gated if s.task == task]
            ax.scatter([cand_size / 1e6] * len(vals), vals, s=25, alpha=0.6, color=f"C{i}", label=f"candidate: {task}")
        mean = sum(s.retention for s in gated) / len(gated)
        ax.scatter([cand_size / 1e6], [mean], s=120, marker="*", color="black", label=f"candidate mean {mean:.3f}", zorder=3)
        if bar:
            ax.axhline(bar, color="#d64545", ls="--", lw=1)
        ax.set_xlabel("bytes on disk (MB)")
        ax.set_ylabel("retention")
        ax.set_title("Size against retention")
        ax.legend(fontsize=7, loc="best")
        out["size"] = _png(fig)
    e = report.efficiency
    if e and e.get("kind") == "generative":
        out["latency"] = _png(lm_report.efficiency_plot(e))
    elif e:
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
        names = ["source", "candidate"]
        for k, key in enumerate(("latency_ms_p50", "latency_ms_p95")):
            spread = [[max(e[n][key] - e[n].get(f"{key}_min", e[n][key]), 0) for n in names],
                      [max(e[n].get(f"{key}_max", e[n][key]) - e[n][key], 0) for n in names]]
            axes[0].bar([x + 0.38 * k for x in range(2)], [e[n][key] for n in names], width=0.38,
                        label=key.split("_")[-1], color=f"C{k}", yerr=spread, capsize=3)
        axes[0].set_xticks([0.19, 1.19], names)
        axes[0].set_ylabel("ms per sentence (batch 1; bars: rounds' min..max)")
        axes[0].legend(fontsize=8)
        axes[0].set_title(f"Latency ({e['source']['device']})")
        axes[1].bar(names, [e[n]["throughput_per_s"] for n in names], color=["#555", "#3b8e5a"])
        axes[1].set_ylabel(f"sentences/s (batch {e['source']['throughput_batch']})")
        axes[1].set_title("Throughput")
        fig.tight_layout()
        out["latency"] = _png(fig)
    return out


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#1f2933;padding:0 1rem}
h1{font-size:1.5rem} h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #e4e7eb;padding-bottom:.3rem}
.gate{padding:.8rem 1rem;border-radius:6px;font-weight:600;margin:1rem 0}.pass{background:#e3f9e5;color:#05400a}
.fail{background:#ffe3e3;color:#610404}.none{background:#f0f4f8;color:#334e68}
table{border-collapse:collapse;font-size:.88rem;margin:.5rem 0}th,td{padding:.3rem .6rem;border-bottom:1px solid #e4e7eb;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}tr.bad td{background:#fff1f1}.muted{color:#7b8794;font-size:.82rem}
img{max-width:100%;border:1px solid #e4e7eb;border-radius:4px;margin:.5rem 0}code{font-size:.82rem}"""


def write_html(report: EvalReport, figures: dict[str, str]) -> str:
    """A self-contained HTML page (plots embedded as base64 PNGs, no external resources)."""
    e = html.escape
    g = report.gate
    cls = "none" if g.get("passed") is None else ("pass" if g["passed"] else "fail")
    bar = g.get("min_retention")
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>mlcompress eval report</title><style>{_CSS}</style></head><body>",
             f"<h1>mlcompress eval</h1><p><b>candidate</b> <code>{e(report.candidate['spec'])}</code> "
             f"against <b>source</b> <code>{e(report.source['spec'])}</code></p>",
             f"<div class='gate {cls}'>Gate: {e(_verdict(report))}</div>",
             f"<p class='muted'>Gate rule: {e(_rule(report))}.</p>",
             f"<p class='muted'>languages {e(', '.join(report.languages))} &middot; tasks {e(', '.join(report.tasks))} &middot; "
             + (e(lm_report.header(report)) if lm_report.is_generative(report) else
                f"transfer recipe {e(report.parameters['transfer'])} (seed {report.parameters['seed']}) &middot; "
                f"prefix {e(repr(report.parameters['prefix']))}") + f" &middot; {report.seconds.get('total', 0):.0f} s</p>"]
    summ = report.as_dict()["summary"]
    if summ:
        parts.append("<h2>Retention per task</h2><table><tr><th>task</th><th>mean</th><th>min</th><th>scores</th></tr>")
        parts += [f"<tr><td>{e(t)}</td><td class='num'>{v['mean_retention']:.4f}</td><td class='num'>{v['min_retention']:.4f}</td>"
                  f"<td class='num'>{v['scores']}</td></tr>" for t, v in summ.items()]
        parts.append("</table>")
    if "retention" in figures:
        parts.append(f"<img alt='retention per task and language' src='data:image/png;base64,{figures['retention']}'>")
    parts.append("<h2>Scores</h2><table><tr><th>task</th><th>language</th><th>metric</th><th>source</th><th>candidate</th>"
                 "<th>retention</th><th>95% interval</th><th>gated</th><th>n</th><th>data</th></tr>")
    for s in report.scores:
        bad = s.gated and bar is not None and s.retention is not None and s.retention < bar
        parts.append(f"<tr class='{'bad' if bad else ''}'><td>{e(s.task)}</td><td>{e(s.language)}</td><td>{e(s.metric)}</td>"
                     f"<td class='num'>{_fmt(s.source)}</td><td class='num'>{_fmt(s.candidate)}</td><td class='num'>{_fmt(s.retention)}</td>"
                     f"<td class='num'>{_interval(s)}</td>"
                     f"<td>{'yes' if s.gated else 'no'}</td><td class='num'>{s.n}</td>"
                     f"<td class='muted'>{e(Path(s.dataset).name if s.dataset else '')}{(' &middot; ' + e(s.note)) if s.note else ''}</td></tr>")
    parts.append("</table>")
    if "size" in figures:
        parts.append(f"<h2>Size and retention</h2><img alt='size against retention' src='data:image/png;base64,{figures['size']}'>")
    if report.efficiency and report.efficiency.get("kind") == "generative":
        parts += lm_report.efficiency_html(report.efficiency, figures.get("latency"))
    elif report.efficiency:
        ef = report.efficiency
        parts.append(f"<h2>Efficiency ({e(ef['source']['device'])})</h2><table><tr><th></th><th>source</th><th>candidate</th><th>candidate / source</th></tr>")
        for key in ("parameters", "bytes_on_disk", "weight_file_bytes", "latency_ms_p50", "latency_ms_p95", "throughput_per_s", "peak_memory_bytes"):
            a, b = ef["source"].get(key), ef["candidate"].get(key)
            show = (lambda v: f"{v:,}") if key == "parameters" else (_mb if "bytes" in key else (lambda v: f"{v:.2f}"))
            parts.append(f"<tr><td>{e(key)}</td><td class='num'>{show(a) if a is not None else '-'}</td>"
                         f"<td class='num'>{show(b) if b is not None else '-'}</td><td class='num'>{_fmt(ef['candidate_over_source'].get(key), 3)}</td></tr>")
        paired = ef.get("latency_ratio_per_round") or {}
        parts.append(f"<tr><td>latency_ms_p50 of the rounds (min..max)</td><td class='num'>{latency_spread(ef['source'])}</td>"
                     f"<td class='num'>{latency_spread(ef['candidate'])}</td>"
                     f"<td class='num'>{_fmt(paired.get('min'), 3)}..{_fmt(paired.get('max'), 3)}</td></tr>")
        parts.append(f"</table><p class='muted'>peak memory: {e(ef['source']['peak_memory_kind'])}; throughput at batch {ef['source']['throughput_batch']}"
                     f"{'; timing: ' + e(ef['source']['method']) if ef['source'].get('method') else ''}</p>")
        if "latency" in figures:
            parts.append(f"<img alt='latency and throughput' src='data:image/png;base64,{figures['latency']}'>")
    parts += lm_report.examples_html(report)
    if report.skipped:
        parts.append("<h2>Skipped</h2><ul>" + "".join(f"<li>{e(s['task'])} {e(s['language'])}: {e(s['reason'])}</li>" for s in report.skipped) + "</ul>")
    parts.append("<h2>Models</h2><pre class='muted'>" + e(json.dumps({"source": report.source, "candidate": report.candidate}, indent=2, default=str)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_reports(report: EvalReport, output: Path, overwrite: bool = False) -> Path:
    """Write report.json, report.md, report.html and mlcompress.json into ``output``, atomically."""
    with atomic_output_dir(output, overwrite) as tmp:
        data = report.as_dict()
        (tmp / "report.json").write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
        (tmp / "report.md").write_text(write_markdown(report), encoding="utf-8")
        (tmp / "report.html").write_text(write_html(report, plots(report)), encoding="utf-8")
        write_provenance(tmp, "eval", report.parameters,
                         [{"role": "source", **report.source}, {"role": "candidate", **report.candidate}],
                         {"gate": report.gate, "summary": data["summary"]})
    return Path(output).expanduser().absolute()


# ---- the pipeline's report: the same renderer, one page for every stage of a pipeline run ------------------------------


def pipeline_plots(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, base64 PNG) per figure of a pipeline report: size, parameters, latency and throughput per stage, retention."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["artifacts"]
    names = [r["stage"] for r in rows]
    figs = []
    for key, label, scale in (("bytes", "size on disk (MB)", 1e6), ("parameters", "parameters (M)", 1e6),
                              ("latency_ms_p50", "latency, batch 1, p50 (ms)", 1.0), ("throughput_per_s", "throughput, batch 32 (sentences/s)", 1.0)):
        vals = [(n, r.get(key)) for n, r in zip(names, rows) if isinstance(r.get(key), (int, float))]
        if len(vals) < 1:
            continue
        fig, ax = plt.subplots(figsize=(5, 2.8))
        bars = ax.bar([n for n, _ in vals], [v / scale for _, v in vals], color="#4c72b0")
        ax.bar_label(bars, fmt="%.1f" if scale != 1.0 or key.startswith("lat") else "%.0f", fontsize=8)
        ax.set_title(label)
        figs.append((label, _png(fig, dpi=100)))
    retention = _pipeline_retention_plot(report)
    return figs + ([("retention", retention)] if retention else [])


def _pipeline_retention_plot(report: dict[str, Any]) -> str | None:
    """Minimum retention per task, one bar per evaluated stage, with the gate's bar; None when nothing was evaluated."""
    rows = report["artifacts"]
    tasks = sorted({t for r in rows for t in (r.get("retention") or {})})
    evald = [r for r in rows if r.get("retention")]
    if not (tasks and evald):
        return None
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 3))
    width = 0.8 / len(evald)
    x = np.arange(len(tasks))
    for i, r in enumerate(evald):
        ax.bar(x + i * width, [r["retention"].get(t, np.nan) for t in tasks], width, label=r["stage"])
    if report["gate"].get("min_retention"):
        ax.axhline(report["gate"]["min_retention"], color="red", linestyle="--", linewidth=1, label="gate")
    ax.set_xticks(x + width * (len(evald) - 1) / 2, tasks)
    ax.set_ylim(max(0.0, min([r["retention"].get(t, 1.0) for r in evald for t in tasks] + [0.9]) - 0.05), 1.02)
    ax.set_title("minimum retention per task (candidate / source)")
    ax.legend(fontsize=8)
    return _png(fig, dpi=100)


_PIPELINE_CSS = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}table{border-collapse:collapse}"
                 "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}td:first-child{text-align:left}"
                 ".muted{color:#666;font-size:90%}")


def _pipeline_head(report: dict[str, Any]) -> list[str]:
    """Title, the gate's verdict and rule, and the failures below the bar."""
    e = html.escape
    verdict = {True: "<b style='color:#1a7f37'>PASSED</b>", False: "<b style='color:#cf222e'>FAILED</b>", None: "no gate"}[report["passed"]]
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>mlcompress pipeline report</title>",
             f"<style>{_PIPELINE_CSS}</style></head><body>",
             f"<h1>mlcompress pipeline: {e(report['source'])} → {e(', '.join(report['languages']))}</h1>",
             f"<p>Gate: {verdict}" + (f" (every gated score of the final artifact keeps ≥ {report['gate']['min_retention']} of the source's;"
                                       f" {report['gate'].get('checked', 0)} checked)" if report["gate"].get("min_retention") else "") + "</p>",
             f"<p class='muted'>Gate rule: {e(report['gate'].get('rule') or '')}</p>"]
    if report["gate"].get("failures"):
        parts.append("<ul>" + "".join(f"<li>{e(f['task'])} {e(f['language'])} {e(f['metric'])}: {f['retention']:.3f}</li>"
                                      for f in report["gate"]["failures"]) + "</ul>")
    return parts


def _pipeline_tables(report: dict[str, Any]) -> list[str]:
    """The stages (action, seconds, note) and the artifacts (size, parameters, vocabulary, speed, retention)."""
    e, num = html.escape, format_number
    parts = ["<h2>Stages</h2><table><tr><th>stage</th><th>action</th><th>seconds</th><th>note</th></tr>"]
    for s in report["stages"]:
        parts.append(f"<tr><td>{e(s['name'])}</td><td>{e(s.get('action', ''))}</td><td>{num(s.get('seconds'), '{:.1f}')}</td>"
                     f"<td style='text-align:left'>{e(s.get('note') or '')}</td></tr>")
    parts.append("</table><h2>Artifacts</h2><table><tr><th>stage</th><th>kind</th><th>MB on disk</th><th>parameters</th><th>vocabulary</th>"
                 "<th>latency p50 ms</th><th>sentences/s</th><th>min retention per task</th></tr>")
    for r in report["artifacts"]:
        ret = ", ".join(f"{t} {v:.3f}" for t, v in (r.get("retention") or {}).items())
        parts.append(f"<tr><td>{e(r['stage'])}</td><td>{e(str(r.get('kind')))}</td><td>{format_mb(r.get('bytes'))}</td>"
                     f"<td>{num(r.get('parameters'), '{:,}')}</td><td>{num(r.get('vocab_size'), '{:,}')}</td>"
                     f"<td>{num(r.get('latency_ms_p50'), '{:,.2f}')}</td><td>{num(r.get('throughput_per_s'), '{:,.1f}')}</td><td>{e(ret)}</td></tr>")
    parts.append("</table>")
    return parts


def _pipeline_evaluations(report: dict[str, Any]) -> list[str]:
    """Per evaluated stage: every score with its retention, interval and whether it was gated; what was skipped."""
    e, num = html.escape, format_number
    parts = []
    for name, ev in report["evaluations"].items():
        parts.append(f"<h2>Retention of {e(name)}</h2><table><tr><th>task</th><th>language</th><th>metric</th><th>source</th>"
                     "<th>candidate</th><th>retention</th><th>95% interval</th><th>gated</th></tr>")
        for s in ev["scores"]:
            iv = s.get("interval") or {}
            span = f"{num(iv.get('retention_low'), '{:.3f}')}..{num(iv.get('retention_high'), '{:.3f}')}" if iv else "—"
            parts.append(f"<tr><td>{e(s['task'])}</td><td>{e(s['language'])}</td><td>{e(s['metric'])}</td><td>{num(s.get('source'), '{:.4f}')}</td>"
                         f"<td>{num(s.get('candidate'), '{:.4f}')}</td><td>{num(s.get('retention'), '{:.4f}')}</td><td>{span}</td>"
                         f"<td title='{e(s.get('note') or '')}'>{'yes' if s.get('gated') else 'no'}</td></tr>")
        parts.append("</table>")
        if ev["skipped"]:
            parts.append("<p class='muted'>skipped: " + "; ".join(e(f"{s['task']} {s['language']}: {s['reason']}") for s in ev["skipped"]) + "</p>")
    return parts


def pipeline_html(report: dict[str, Any]) -> str:
    """A pipeline report (``mlcompress pipeline``'s report.json) as one self-contained HTML page with its plots embedded."""
    e = html.escape
    parts = _pipeline_head(report) + _pipeline_tables(report)
    for label, png in pipeline_plots(report):
        parts.append(f"<div style='display:inline-block'><img alt='{e(label)}' src='data:image/png;base64,{png}'></div>")
    parts += _pipeline_evaluations(report)
    if report["notes"]:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in report["notes"]) + "</ul>")
    parts.append(f"<p class='muted'>data: {e(str(report['data']))}</p></body></html>")
    return "\n".join(parts)
