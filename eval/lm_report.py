"""The parts of the eval reports that only a causal-LM comparison has: its header line, the prefill / decode
efficiency table and plot, and the greedy continuations that differ (what a failing candidate actually writes)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from mlcompress.artifacts import format_mb

if TYPE_CHECKING:
    from .run import EvalReport

_ROWS = (("parameters", lambda v: f"{v:,}"), ("bytes_on_disk", lambda v: format_mb(v, " MB", "-")),
         ("weight_file_bytes", lambda v: format_mb(v, " MB", "-")), ("prefill_ms_p50", lambda v: f"{v:.2f} ms"),
         ("prefill_ms_p95", lambda v: f"{v:.2f} ms"), ("decode_tokens_per_s", lambda v: f"{v:.1f} tokens/s"),
         ("peak_memory_bytes", lambda v: format_mb(v, " MB", "-")))


def is_generative(report: EvalReport) -> bool:
    """True for a report of the generative tasks (a causal LM's, or an encoder-decoder's)."""
    return report.parameters.get("model_kind") in ("causal-lm", "seq2seq")


def header(report: EvalReport) -> str:
    """What the generative run read: its held-out text, the limits, and how candidate ids were matched."""
    p = report.parameters
    if p.get("model_kind") == "seq2seq":
        lim = p.get("seq2seq_limits") or {}
        return (f"held-out text: {p.get('held_out')}; directions {', '.join(p.get('directions') or [])}; up to "
                f"{lim.get('pairs')} teacher-forced pairs, {lim.get('prompts')} greedy translations x {lim.get('new_tokens')} "
                f"tokens per direction; candidate ids matched by {(p.get('id_map') or {}).get('how')}")
    lim = p.get("lm_limits") or {}
    return (f"held-out text: {p.get('held_out')}; up to {lim.get('texts')} texts, {lim.get('prompts')} greedy prompts x "
            f"{lim.get('new_tokens')} tokens; candidate ids matched by {(p.get('id_map') or {}).get('how')}")


def _spread(m: dict[str, Any], key: str, digits: int) -> str:
    low, high = m.get(f"{key}_min"), m.get(f"{key}_max")
    return f"{low:.{digits}f}..{high:.{digits}f}" if isinstance(low, (int, float)) and isinstance(high, (int, float)) else "-"


def _table(e: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(row, source, candidate, ratio) cells of the efficiency table."""
    rows = []
    for key, fmt in _ROWS:
        a, b = e["source"].get(key), e["candidate"].get(key)
        r = e["candidate_over_source"].get(key)
        rows.append((key, fmt(a) if isinstance(a, (int, float)) else "-", fmt(b) if isinstance(b, (int, float)) else "-",
                     f"{r:.3f}" if isinstance(r, (int, float)) else "-"))
    paired = e.get("prefill_ratio_per_round") or {}
    rows.append(("prefill_ms_p50 of the rounds (min..max)", _spread(e["source"], "prefill_ms_p50", 2),
                 _spread(e["candidate"], "prefill_ms_p50", 2),
                 f"{paired['min']:.3f}..{paired['max']:.3f}" if paired else "-"))
    rows.append(("decode_tokens_per_s of the rounds (min..max)", _spread(e["source"], "decode_tokens_per_s", 1),
                 _spread(e["candidate"], "decode_tokens_per_s", 1), "-"))
    return rows


def efficiency_markdown(e: dict[str, Any]) -> list[str]:
    """The Markdown efficiency section of a generative report."""
    lines = ["", f"## Efficiency ({e['source'].get('device', '-')}, batch 1)", "", "| | source | candidate | candidate / source |",
             "| --- | ---: | ---: | ---: |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _table(e)]
    return lines + [f"\nTiming: {e['method']}."]


def efficiency_html(e: dict[str, Any], plot: str | None) -> list[str]:
    """The HTML efficiency section of a generative report (with its plot when drawn)."""
    esc = html.escape
    parts = [f"<h2>Efficiency ({esc(str(e['source'].get('device', '-')))}, batch 1)</h2><table><tr><th></th><th>source</th>"
             "<th>candidate</th><th>candidate / source</th></tr>"]
    parts += [f"<tr><td>{esc(a)}</td><td class='num'>{esc(b)}</td><td class='num'>{esc(c)}</td><td class='num'>{esc(d)}</td></tr>"
              for a, b, c, d in _table(e)]
    parts.append(f"</table><p class='muted'>timing: {esc(e['method'])}</p>")
    if plot:
        parts.append(f"<img alt='prefill latency and decode speed' src='data:image/png;base64,{plot}'>")
    return parts


def efficiency_plot(e: dict[str, Any]) -> Any:
    """A matplotlib figure: prefill ms (p50, rounds' spread) and decode tokens/s (median, rounds' spread)."""
    import matplotlib.pyplot as plt

    names = ["source", "candidate"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key, label in ((axes[0], "prefill_ms", f"ms per {e['prefill_tokens']}-token prompt (p50)"),
                           (axes[1], "decode_tokens_per_s", "new tokens/s (batch 1)")):
        mid = key + ("_p50" if key == "prefill_ms" else "")
        vals = [e[n].get(mid) or 0.0 for n in names]
        low = [max(v - (e[n].get(f"{mid}_min") or v), 0) for n, v in zip(names, vals)]
        high = [max((e[n].get(f"{mid}_max") or v) - v, 0) for n, v in zip(names, vals)]
        ax.bar(names, vals, color=["#555", "#3b8e5a"], yerr=[low, high], capsize=3)
        ax.set_ylabel(label)
    axes[0].set_title(f"Prefill ({e['source'].get('device', '-')})")
    axes[1].set_title("Decode")
    fig.tight_layout()
    return fig


def _examples(report: EvalReport) -> list[tuple[str, dict[str, Any]]]:
    """(language, example) for every greedy continuation a report keeps as an example of a difference."""
    return [(s.language, ex) for s in report.scores if s.metric == "identical_text" and s.details.get("differing")
            for ex in s.details.get("examples", [])]


def examples_markdown(report: EvalReport) -> list[str]:
    """The Markdown list of differing greedy continuations (none when every continuation was the same)."""
    rows = _examples(report)
    if not rows:
        return []
    lines = ["", "## Greedy continuations that differ (first few)", ""]
    for lang, ex in rows:
        lines += [f"- {lang} prompt: `{ex['prompt']}`", f"  - source: `{ex['source']}`", f"  - candidate: `{ex['candidate']}`"]
    return lines


def examples_html(report: EvalReport) -> list[str]:
    """The HTML table of differing greedy continuations (none when every continuation was the same)."""
    rows = _examples(report)
    if not rows:
        return []
    esc = html.escape
    parts = ["<h2>Greedy continuations that differ (first few)</h2><table><tr><th>language</th><th>prompt</th>"
             "<th>source</th><th>candidate</th></tr>"]
    parts += [f"<tr><td>{esc(lang)}</td><td>{esc(ex['prompt'])}</td><td>{esc(ex['source'])}</td><td>{esc(ex['candidate'])}</td></tr>"
              for lang, ex in rows]
    return parts + ["</table>"]
