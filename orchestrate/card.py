"""The pipeline's model card: the final model's ``README.md``, with the config that made it and eval's retention table.

Written into the final artifact's folder (what a user ships), replacing the card its stage wrote; the pipeline's
fingerprints leave ``README.md`` out, so the card never makes a stage run again. A bundle whose manifest checksums its
``README.md`` keeps its own card, and the pipeline's goes to ``OUT/README.md`` instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mlcompress.model_card import CARD_FILE, render_card, write_model_card


def pipeline_command(cfg: dict[str, Any], out: Path) -> str:
    """The config the run used (as YAML) and the command that runs it."""
    import yaml

    plain = json.loads(json.dumps(cfg, default=str))
    return f"# config.yaml\n{yaml.safe_dump(plain, sort_keys=False, allow_unicode=True).rstrip()}\n\n" \
           f"mlcompress pipeline config.yaml -o {out.name}"


def _checksummed(folder: Path) -> bool:
    """Whether a bundle's manifest lists README.md among the files it verifies (then it must not change)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and CARD_FILE in (manifest.get("files") or {})


def student_section(cmp: dict[str, Any]) -> str:
    """The card's "student against the trimmed model" section: per eval score, both against the source."""
    def num(v: Any, fmt: str = "{:.3f}") -> str:
        return fmt.format(v) if isinstance(v, (int, float)) else "—"

    rows = ["## Student against the trimmed model",
            "This model is a distilled student. Each score beside the trimmed (not distilled) model's on the same data, "
            "both against the source: what the student's speed costs.", "",
            "| task | language | metric | source | trimmed | retention | student | retention | change |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in cmp["rows"]:
        rows.append(f"| {r['task']} | {r['language']} | {r['metric']} | {num(r['source'], '{:.4f}')} | {num(r['trim'], '{:.4f}')} | "
                    f"{num(r['trim_retention'])} | {num(r['student'], '{:.4f}')} | {num(r['student_retention'])} | "
                    f"{num(r['retention_change'], '{:+.3f}')} |")
    ms, params = cmp.get("latency_ms_p50") or {}, cmp.get("parameters") or {}
    if cmp.get("student_speedup"):
        rows.append(f"\nBatch-1 latency in PyTorch: the distilled model {ms['distilled'] or ms['student']:.2f} ms, the trimmed "
                    f"model {ms['trim']:.2f} ms ({cmp['student_speedup']:.2f}x faster).")
    if isinstance(params.get("trim"), int) and isinstance(params.get("student"), int):
        rows.append(f"\nParameters: {params['student']:,} against the trimmed model's {params['trim']:,}.")
    return rows[0] + "\n\n" + "\n".join(rows[1:])


def _with_section(text: str, section: str) -> str:
    """The card's text with ``section`` before its usage part (at the end when it has none)."""
    marker = "\n## How to use it"
    at = text.find(marker)
    return text.rstrip("\n") + "\n\n" + section + "\n" if at < 0 else text[:at] + "\n" + section + "\n" + text[at:]


def write_pipeline_card(out: Path, cfg: dict[str, Any], artifacts: list[dict[str, Any]],
                        evaluations: dict[str, Any], student: dict[str, Any] | None = None) -> Path | None:
    """Write the card of the run's final model (None when the run made no model), with eval's scores for it and, for a
    distilled student (``student``: the report's ``student_vs_trim``), its scores beside the trimmed model's."""
    if len(artifacts) < 2:
        return None
    final = artifacts[-1]
    folder = Path(final["path"])
    evaluation = evaluations.get(final["name"])
    evaluation = {"scores": evaluation.get("scores"), "gate": evaluation.get("gate")} if evaluation else None
    command = pipeline_command(cfg, out)
    checksummed = _checksummed(folder)
    if not checksummed and not student:
        return write_model_card(folder, evaluation=evaluation, command=command)
    text = render_card(folder, folder.name, evaluation, command)
    target = out / CARD_FILE if checksummed else folder / CARD_FILE
    partial = target.with_name(CARD_FILE + ".partial")
    partial.write_text(_with_section(text, student_section(student)) if student else text, encoding="utf-8")
    os.replace(partial, target)
    return target
