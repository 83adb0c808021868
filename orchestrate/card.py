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


def write_pipeline_card(out: Path, cfg: dict[str, Any], artifacts: list[dict[str, Any]],
                        evaluations: dict[str, Any]) -> Path | None:
    """Write the card of the run's final model (None when the run made no model), with eval's scores for it."""
    if len(artifacts) < 2:
        return None
    final = artifacts[-1]
    folder = Path(final["path"])
    evaluation = evaluations.get(final["name"])
    evaluation = {"scores": evaluation.get("scores"), "gate": evaluation.get("gate")} if evaluation else None
    command = pipeline_command(cfg, out)
    if not _checksummed(folder):
        return write_model_card(folder, evaluation=evaluation, command=command)
    target = out / CARD_FILE
    partial = target.with_name(CARD_FILE + ".partial")
    partial.write_text(render_card(folder, folder.name, evaluation, command), encoding="utf-8")
    os.replace(partial, target)
    return target
