"""Representation fidelity of a candidate against its source: embedding cosine, linear CKA, MLM top-1 agreement."""

from __future__ import annotations

import numpy as np

from .sts import pair_cosines


def embedding_cosine(source: np.ndarray, candidate: np.ndarray) -> float:
    """Mean cosine similarity of the two models' embeddings of the same sentences."""
    return float(pair_cosines(source, candidate).mean())


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) of two representations of the same n examples (n x d1, n x d2)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x, "fro") ** 2
    denom = np.linalg.norm(x.T @ x, "fro") * np.linalg.norm(y.T @ y, "fro")
    return float(cross / denom) if denom > 0 else 0.0


def matching_layers(n_source: int, n_candidate: int) -> list[tuple[int, int]]:
    """Pairs (source layer, candidate layer) at matching relative depth; layer 0 is the embedding output.

    A candidate with fewer layers (a distilled student) is matched to the source layer at the same fraction
    of the depth: candidate layer j of L_c to source layer round(j * L_s / L_c).
    """
    return [(round(j * (n_source - 1) / max(n_candidate - 1, 1)), j) for j in range(n_candidate)]


def layer_cka(source_layers: list[np.ndarray], candidate_layers: list[np.ndarray]) -> dict[str, float]:
    """CKA at each matching depth (keys ``"s{i}-c{j}"``), plus their mean and the last layers' CKA."""
    out: dict[str, float] = {}
    for i, j in matching_layers(len(source_layers), len(candidate_layers)):
        out[f"s{i}-c{j}"] = linear_cka(source_layers[i], candidate_layers[j])
    values = list(out.values())
    return {"per_layer": out, "mean": float(np.mean(values)), "last": values[-1]}


def top1_agreement(source_tokens: list[list[str]], candidate_tokens: list[list[str]]) -> float:
    """Share of masked positions where both models' top-1 predicted token (as a string) is the same."""
    pairs = [(s, c) for ss, cc in zip(source_tokens, candidate_tokens) for s, c in zip(ss, cc)]
    if not pairs:
        raise ValueError("no masked positions to compare")
    return float(np.mean([s == c for s, c in pairs]))
