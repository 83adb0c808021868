"""Where an artifact came from, for its model card: the chain of `mlcompress.json` records up to the source, the
source's Hub id (``base_model``), its licence, and the licence and citation sections of the source's own card."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import read_provenance
from .errors import InputError

CARD_FILE = "README.md"
SOURCE_START, SOURCE_END = "<!-- mlcompress: from the source's card -->", "<!-- mlcompress: end of the source's card -->"
# the Hub model each bundled model was built from, and its licence
BUNDLED_BASE = {"multilingual-e5-small": ("intfloat/multilingual-e5-small", "mit"),
                "multilingual-e5-small-enpt": ("intfloat/multilingual-e5-small", "mit"),
                "gemma-3-270m": ("google/gemma-3-270m", "gemma")}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_CACHE = re.compile(r"models--([\w.-]+)--([\w.-]+)")
_KEPT_SECTIONS = re.compile(r"licen[cs]e|citation|cite|bibtex|reference", re.IGNORECASE)


@dataclass
class Step:
    """One artifact of the chain: its folder, its record (None for a source without one), the input naming it."""

    path: Path
    record: dict[str, Any] | None
    named_as: dict[str, Any] = field(default_factory=dict)


def _record(path: Path) -> dict[str, Any] | None:
    try:
        return read_provenance(path) if path.is_dir() else None
    except InputError:
        return None


def chain(directory: Path, limit: int = 12) -> list[Step]:
    """The artifact, then the model it was made from (its record's first input with a folder), up to the source."""
    steps = [Step(directory, _record(directory))]
    while len(steps) < limit:
        record = steps[-1].record
        if not record or record.get("stage") == "bundled":
            break
        named = next((i for i in record.get("inputs") or [] if isinstance(i, dict) and i.get("role") != "candidate"
                      and (i.get("source") or i.get("path"))), None)
        if named is None:
            break
        path = Path(str(named.get("path") or named.get("source")))
        if path in (s.path for s in steps):
            break
        steps.append(Step(path, _record(path), named))
    return steps


def hub_id(step: Step) -> str | None:
    """The Hub id a step's model is known by: its Hub spec, its bundled model's base, or its Hub cache folder."""
    spec = str(step.named_as.get("source") or "")
    bundled = (step.record or {}).get("parameters", {}).get("name") if (step.record or {}).get("stage") == "bundled" else None
    if spec.startswith("bundled:") or bundled:
        return BUNDLED_BASE.get(bundled or spec.split(":", 1)[1], (None, None))[0]
    if step.named_as.get("kind") == "hub" or (_HUB_ID.match(spec) and not Path(spec).exists()):
        return spec
    cached = _HUB_CACHE.search(str(step.path))
    return f"{cached.group(1)}/{cached.group(2)}" if cached else None


def base_model(steps: list[Step]) -> str | None:
    """The nearest model up the chain that has a Hub id (the artifact itself excluded)."""
    return next((h for s in steps[1:] if (h := hub_id(s))), None)


def front_matter(text: str) -> tuple[dict[str, Any], str]:
    """A card's YAML front matter (empty when it has none or it does not parse) and its body."""
    import yaml

    match = re.match(r"^---\s*\n(.*?)\n---\s*\n?", text, re.DOTALL)
    if not match:
        return {}, text
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        meta = None
    return (meta if isinstance(meta, dict) else {}), text[match.end():]


def kept_sections(body: str) -> str:
    """The licence and citation sections of a card's body (each heading with its text), headings set to level 3."""
    out, keep, level, fenced = [], False, 0, False
    for line in body.splitlines():
        fenced ^= line.lstrip().startswith(("```", "~~~"))  # a '#' line inside a code block is not a heading
        heading = None if fenced or line.lstrip().startswith(("```", "~~~")) else re.match(r"^(#{1,6})\s+(.*)$", line)
        if heading:
            depth = len(heading.group(1))
            if keep and depth > level:
                out.append("#" * min(6, 3 + depth - level) + " " + heading.group(2))
                continue
            keep, level = bool(_KEPT_SECTIONS.search(heading.group(2))), depth
            if keep:
                out.append("### " + heading.group(2))
            continue
        if keep:
            out.append(line)
    return "\n".join(out).strip()


def source_card(steps: list[Step]) -> tuple[str | None, str]:
    """The licence (front matter, else a bundled model's) and the kept sections of the source's own card, read from the
    nearest card up the chain (an mlcompress card passes on what it carried from the source)."""
    for step in steps[1:]:
        card = step.path / CARD_FILE
        if not card.is_file():
            continue
        meta, body = front_matter(card.read_text(encoding="utf-8", errors="replace"))
        if "mlcompress" in (meta.get("tags") or []):
            carried = body.split(SOURCE_START, 1)[1].split(SOURCE_END, 1)[0] if SOURCE_START in body else ""
            return meta.get("license"), carried.strip()
        return meta.get("license"), kept_sections(body)
    bundled = next(((s.record or {}).get("parameters", {}).get("name") for s in steps if (s.record or {}).get("stage") == "bundled"), None)
    return BUNDLED_BASE.get(bundled or "", (None, None))[1], ""
