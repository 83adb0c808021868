"""Model surgery: keep the embedding rows, output-head rows and vocabulary biases of kept ids,
and re-index every token id in ``config`` and ``generation_config``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlcompress.errors import UnsupportedModelError

_ID_KEYS_SUFFIX = ("_token_id", "_token_ids")
_ID_LIST_KEYS = ("suppress_tokens", "begin_suppress_tokens", "bad_words_ids")


def vocab_rows(model: nn.Module) -> int:
    """Rows of the input embedding matrix (may exceed the tokenizer's size)."""
    emb = model.get_input_embeddings()
    if emb is None or not hasattr(emb, "weight"):
        raise UnsupportedModelError(f"{type(model).__name__} has no input embedding matrix to trim")
    return emb.weight.shape[0]


def _configs(model: nn.Module) -> list[Any]:
    configs = [model.config]
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        configs.append(model.generation_config)
    return configs


def _is_id_key(key: str) -> bool:
    return isinstance(key, str) and (key.endswith(_ID_KEYS_SUFFIX) or key in _ID_LIST_KEYS)


def _map_ids(value: Any, fn: Any) -> Any:
    """Apply ``fn`` to every non-negative int inside a value (an int, or nested lists of ints)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return fn(value) if value >= 0 else value
    if isinstance(value, (list, tuple)):
        return type(value)(_map_ids(v, fn) for v in value)
    return value


def config_token_ids(model: nn.Module) -> set[int]:
    """Every token id the model's configs mention (these are always kept)."""
    found: set[int] = set()

    def visit(node: dict[str, Any]) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                visit(value)
            elif _is_id_key(key):
                _map_ids(value, lambda v: found.add(v) or v)

    for cfg in _configs(model):
        visit(cfg.to_dict())
    return found


def _remap_config(cfg: Any, old_to_new: dict[int, int]) -> None:
    for key, value in cfg.to_dict().items():
        sub = getattr(cfg, key, None)
        if isinstance(value, dict) and hasattr(sub, "to_dict"):
            _remap_config(sub, old_to_new)
        elif _is_id_key(key) and value is not None:
            setattr(cfg, key, _map_ids(value, lambda v: old_to_new[v]))


def _vocab_tensors(model: nn.Module, rows: int) -> list[tuple[nn.Module, str, int]]:
    """(owner module, attribute, vocab dim) of every parameter or buffer indexed by token id."""
    found: list[tuple[nn.Module, str, int]] = []
    seen: set[int] = set()

    def add(owner: nn.Module, attr: str, dim: int) -> None:
        tensor = getattr(owner, attr, None)
        if isinstance(tensor, torch.Tensor) and id(tensor) not in seen and tensor.dim() > dim and tensor.shape[dim] == rows:
            seen.add(id(tensor))
            found.append((owner, attr, dim))

    add(model.get_input_embeddings(), "weight", 0)
    out = model.get_output_embeddings()
    if out is not None:
        add(out, "weight", 0)
        add(out, "bias", 0)
    for module in model.modules():  # MLM-head biases and BART's final_logits_bias
        if isinstance(module, (nn.LayerNorm, nn.Embedding)) or (isinstance(module, nn.Linear) and module is not out):
            continue
        for attr in ("bias", "final_logits_bias"):
            tensor = getattr(module, attr, None)
            if isinstance(tensor, torch.Tensor) and tensor.dim() in (1, 2):
                add(module, attr, tensor.dim() - 1)
    return found


def trim_model(model: nn.Module, keep: list[int], old_to_new: dict[int, int]) -> nn.Module:
    """Trim ``model`` in place to the ``keep`` ids (sorted old ids) and re-index its configs."""
    rows = vocab_rows(model)
    index = torch.tensor(keep, dtype=torch.long)
    if index.numel() and int(index.max()) >= rows:
        raise UnsupportedModelError(f"tokenizer id {int(index.max())} has no embedding row ({rows} rows)")
    out = model.get_output_embeddings()
    tied = out is not None and out.weight is model.get_input_embeddings().weight
    for owner, attr, dim in _vocab_tensors(model, rows):
        old = getattr(owner, attr)
        new = old.detach().index_select(dim, index).clone()
        if isinstance(old, nn.Parameter):
            new_param = nn.Parameter(new, requires_grad=old.requires_grad)
            for module in model.modules():  # every module sharing this parameter (tied heads, shared biases)
                for name, p in list(module._parameters.items()):
                    if p is old:
                        module._parameters[name] = new_param
        else:
            owner._buffers[attr] = new
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.weight.shape[0] == len(keep) and module.num_embeddings == rows:
            module.num_embeddings = len(keep)
            if module.padding_idx is not None:
                module.padding_idx = old_to_new.get(module.padding_idx)
        if isinstance(module, nn.Linear) and module.weight.shape[0] == len(keep) and module.out_features == rows:
            module.out_features = len(keep)
    for cfg in _configs(model):
        _remap_config(cfg, old_to_new)
    for cfg in [model.config] + [getattr(model.config, s, None) for s in ("text_config", "decoder")]:
        if cfg is not None and hasattr(cfg, "vocab_size"):
            cfg.vocab_size = len(keep)
    if tied:
        model.tie_weights()
    return model
