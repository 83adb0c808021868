"""Student construction: keep every k-th teacher layer, copied with the embeddings (BiStil's initialisation)."""

from __future__ import annotations

import copy

import torch

from mlcompress.errors import InputError, UnsupportedModelError


def layer_map(n_teacher_layers: int, every_k: int = 2) -> list[int]:
    """Teacher layer copied into each student layer: the last of every block of k (1, 3, 5, ... for k=2)."""
    if every_k < 1 or every_k > n_teacher_layers:
        raise InputError(f"every_k must be between 1 and {n_teacher_layers}, got {every_k}",
                         "k=2 halves the depth (BiStil's default)")
    return list(range(every_k - 1, n_teacher_layers, every_k))


def hidden_pairs(mapping: list[int]) -> list[tuple[int, int]]:
    """(student, teacher) indices into `hidden_states` whose outputs are matched: embeddings and each mapped layer."""
    return [(0, 0)] + [(s + 1, t + 1) for s, t in enumerate(mapping)]


def encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of transformer blocks of an encoder (BERT, XLM-R, DistilBERT-style naming)."""
    base = getattr(model, "base_model", model)
    for path in ("encoder.layer", "transformer.layer", "layers"):
        obj = base
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise UnsupportedModelError(f"cannot find the transformer layers of {type(model).__name__}",
                                "distillation supports BERT-style encoders (BERT, XLM-R, multilingual-e5)")


def make_student(teacher: torch.nn.Module, every_k: int = 2) -> tuple[torch.nn.Module, list[int]]:
    """A copy of ``teacher`` that keeps every k-th layer; returns the student and its layer map."""
    layers = encoder_layers(teacher)
    mapping = layer_map(len(layers), every_k)
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(mapping)
    student = type(teacher)(config)
    student_state = student.state_dict()
    teacher_state = teacher.state_dict()
    prefix = _layers_prefix(teacher)
    loaded = {}
    for name in student_state:
        source = name
        if name.startswith(prefix):
            index, rest = name[len(prefix):].split(".", 1)
            source = f"{prefix}{mapping[int(index)]}.{rest}"
        loaded[name] = teacher_state[source].clone()
    student.load_state_dict(loaded, strict=True)
    student.to(next(teacher.parameters()).dtype)
    return student, mapping


def _layers_prefix(model: torch.nn.Module) -> str:
    """State-dict prefix of the layer list, e.g. 'encoder.layer.' or 'bert.encoder.layer.'."""
    layers = encoder_layers(model)
    for name, module in model.named_modules():
        if module is layers:
            return name + "."
    raise UnsupportedModelError("cannot locate the layer list in the state dict", "use a BERT-style encoder")
