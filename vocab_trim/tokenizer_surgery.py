"""Tokenizer surgery on the tokenizers-library JSON: drop pieces, re-index, keep BPE merge closures.

Handles Unigram (XLM-R, mT5, multilingual-e5), WordPiece (mBERT), BPE (byte-level and not) and
WordLevel models. Ids keep their original order, so special tokens at the front stay there.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from mlcompress.errors import UnsupportedModelError

SUPPORTED = ("Unigram", "WordPiece", "BPE", "WordLevel")


def model_type(tj: dict[str, Any]) -> str:
    """The tokenizer model's type, refusing ones that cannot be trimmed."""
    kind = tj.get("model", {}).get("type")
    if kind not in SUPPORTED:
        raise UnsupportedModelError(f"cannot trim a {kind!r} tokenizer model", f"supported: {', '.join(SUPPORTED)}")
    return kind


def _walk(node: Any, key: str) -> list[dict[str, Any]]:
    """Every dict of ``"type": key`` inside a (possibly nested Sequence) pipeline component."""
    if isinstance(node, dict):
        found = [node] if node.get("type") == key else []
        for value in node.values():
            found += _walk(value, key)
        return found
    if isinstance(node, list):
        return [d for item in node for d in _walk(item, key)]
    return []


def is_byte_level(tj: dict[str, Any]) -> bool:
    """Whether the tokenizer maps text to bytes first (GPT-2 style byte-level BPE)."""
    return bool(_walk(tj.get("pre_tokenizer"), "ByteLevel") or _walk(tj.get("decoder"), "ByteLevel"))


def pieces(tj: dict[str, Any]) -> list[str | None]:
    """Token string of every id (model vocabulary and added tokens); None for ids with no token."""
    model = tj["model"]
    if model["type"] == "Unigram":
        table: dict[int, str] = {i: p for i, (p, _) in enumerate(model["vocab"])}
    else:
        table = {i: p for p, i in model["vocab"].items()}
    for added in tj.get("added_tokens", []):
        table[added["id"]] = added["content"]
    size = max(table) + 1 if table else 0
    return [table.get(i) for i in range(size)]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (as the ByteLevel pre-tokenizer uses)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars)))


def surface_texts(tj: dict[str, Any]) -> list[str | None]:
    """The text each piece stands for, without word-boundary markers (for script-based selection)."""
    model = tj["model"]
    out: list[str | None] = []
    prefix = model.get("continuing_subword_prefix") or ""
    specials = {a["id"] for a in tj.get("added_tokens", [])}
    byte_level = is_byte_level(tj)
    to_byte = {c: b for b, c in _bytes_to_unicode().items()}
    for i, piece in enumerate(pieces(tj)):
        if piece is None or i in specials:
            out.append(piece if i not in specials else "")
            continue
        if byte_level and all(ch in to_byte for ch in piece):
            raw = bytes(to_byte[ch] for ch in piece)
            text = raw.decode("utf-8", errors="ignore")  # a partial character keeps only what decodes
            out.append(text)
            continue
        text = piece.replace("▁", " ")
        if prefix and text.startswith(prefix):
            text = text[len(prefix):]
        out.append(text.strip(" "))
    return out


def required_ids(tj: dict[str, Any]) -> set[int]:
    """Ids that every trim keeps: added/special tokens (language codes among them), the unknown token, byte tokens."""
    keep = {a["id"] for a in tj.get("added_tokens", [])}
    model = tj["model"]
    vocab_pieces = pieces(tj)
    index = {p: i for i, p in enumerate(vocab_pieces) if p is not None}
    if model["type"] == "Unigram" and model.get("unk_id") is not None:
        keep.add(model["unk_id"])
    if model.get("unk_token") in index:
        keep.add(index[model["unk_token"]])
    if model["type"] == "BPE":
        if is_byte_level(tj):
            keep.update(index[c] for c in _bytes_to_unicode().values() if c in index)
        if model.get("byte_fallback"):
            keep.update(index[f"<0x{b:02X}>"] for b in range(256) if f"<0x{b:02X}>" in index)
    if model["type"] == "Unigram" and model.get("byte_fallback"):
        keep.update(index[f"<0x{b:02X}>"] for b in range(256) if f"<0x{b:02X}>" in index)
    return keep


def _merge_pairs(model: dict[str, Any]) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]


def _merged(model: dict[str, Any], a: str, b: str) -> str:
    prefix = model.get("continuing_subword_prefix") or ""
    return a + (b[len(prefix):] if prefix and b.startswith(prefix) else b)


def merge_closure(tj: dict[str, Any], keep: set[int]) -> set[int]:
    """For BPE: add every token that a merge building a kept token needs, recursively."""
    model = tj["model"]
    if model["type"] != "BPE":
        return set(keep)
    vocab = model["vocab"]
    makers: dict[str, list[tuple[str, str]]] = {}
    for a, b in _merge_pairs(model):
        makers.setdefault(_merged(model, a, b), []).append((a, b))
    by_id = pieces(tj)
    out = set(keep)
    stack = [by_id[i] for i in keep if i < len(by_id) and by_id[i] is not None]
    while stack:
        token = stack.pop()
        for a, b in makers.get(token, ()):
            for part in (a, b):
                pid = vocab.get(part)
                if pid is not None and pid not in out:
                    out.add(pid)
                    stack.append(part)
    return out


def trim_tokenizer_json(tj: dict[str, Any], keep: list[int]) -> tuple[dict[str, Any], dict[int, int]]:
    """A new tokenizer JSON holding only the ``keep`` ids (sorted), and the old -> new id map."""
    keep = sorted(set(keep))
    old_to_new = {old: new for new, old in enumerate(keep)}
    kind = model_type(tj)
    # copy everything but the (large) vocabulary and merges, which are rebuilt below
    out = copy.deepcopy({k: v for k, v in tj.items() if k != "model"})
    model = out["model"] = copy.deepcopy({k: v for k, v in tj["model"].items() if k not in ("vocab", "merges")})
    model["vocab"] = tj["model"]["vocab"]
    if "merges" in tj["model"]:
        model["merges"] = tj["model"]["merges"]
    if kind == "Unigram":
        vocab = model["vocab"]
        model["vocab"] = [list(vocab[i]) for i in keep if i < len(vocab)]
        if model.get("unk_id") is not None:
            model["unk_id"] = old_to_new[model["unk_id"]]
    else:
        model["vocab"] = {p: old_to_new[i] for p, i in sorted(model["vocab"].items(), key=lambda kv: kv[1]) if i in old_to_new}
        if kind == "BPE":
            kept = model["vocab"]
            merges = [(a, b) for a, b in _merge_pairs(model) if a in kept and b in kept and _merged(model, a, b) in kept]
            as_lists = model.get("merges") and not isinstance(model["merges"][0], str)
            model["merges"] = [list(m) for m in merges] if as_lists else [f"{a} {b}" for a, b in merges]
    if "added_tokens" in out:  # dropped placeholder specials go
        out["added_tokens"] = [a for a in out["added_tokens"] if a["id"] in old_to_new]
    for added in out.get("added_tokens", []):
        added["id"] = old_to_new[added["id"]]
    _remap_processor(out.get("post_processor"), old_to_new)
    if out.get("padding") and "pad_id" in out["padding"]:
        out["padding"]["pad_id"] = old_to_new.get(out["padding"]["pad_id"], out["padding"]["pad_id"])
    return out, old_to_new


def _remap_processor(node: Any, old_to_new: dict[int, int]) -> None:
    """Re-index special-token ids inside post-processors (Template, Roberta, Bert, Sequence)."""
    if isinstance(node, list):
        for item in node:
            _remap_processor(item, old_to_new)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind == "TemplateProcessing":
        for spec in node.get("special_tokens", {}).values():
            spec["ids"] = [old_to_new[i] for i in spec["ids"]]
    elif kind in ("RobertaProcessing", "BertProcessing"):
        for key in ("sep", "cls"):
            token, tid = node[key]
            node[key] = [token, old_to_new[tid]]
    for value in node.values():
        if isinstance(value, (dict, list)):
            _remap_processor(value, old_to_new)


def write_vocab_files(tj: dict[str, Any], src: Path, dst: Path) -> list[str]:
    """Rewrite the legacy vocabulary files the source directory had (vocab.txt, vocab.json, merges.txt)."""
    written = []
    by_id = pieces(tj)
    if (src / "vocab.txt").is_file():
        (dst / "vocab.txt").write_text("".join(f"{p}\n" for p in by_id if p is not None), encoding="utf-8")
        written.append("vocab.txt")
    if (src / "vocab.json").is_file():
        vocab = {p: i for i, p in enumerate(by_id) if p is not None}
        (dst / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        written.append("vocab.json")
    if (src / "merges.txt").is_file() and tj["model"]["type"] == "BPE":
        lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in _merge_pairs(tj["model"])]
        (dst / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        written.append("merges.txt")
    return written


def word_marker(tj: dict[str, Any]) -> str | None:
    """The mark a piece carries when it starts a word ('▁' for SentencePiece, 'Ġ' for byte-level BPE)."""
    metaspace = _walk(tj.get("pre_tokenizer"), "Metaspace")
    if metaspace:
        return metaspace[0].get("replacement", "▁")
    if is_byte_level(tj):
        return _bytes_to_unicode()[ord(" ")]
    return None
