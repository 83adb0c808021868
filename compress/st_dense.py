"""sentence-transformers ``Dense`` modules as torch modules: read, written, and run after the pooling.

A Dense folder holds ``config.json`` (in/out features, bias, activation) and its weights (``model.safetensors``, or
``pytorch_model.bin`` in older models) under the names ``linear.weight`` and ``linear.bias``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ModelSourceError, UnsupportedModelError

# the activations sentence-transformers saves for Dense modules, by class name (the config's last dotted part)
_ACTIVATIONS = ("Tanh", "Identity", "ReLU", "GELU", "Sigmoid", "SiLU")


def dense_weights(layer: Any) -> dict[str, Any]:
    """The ``linear.weight`` (out x in) and, with a bias, ``linear.bias`` tensors of a Dense layer."""
    import torch

    folder = Path(layer.source)
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(folder / "model.safetensors"))
    elif (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise ModelSourceError(f"{folder} has no model.safetensors or pytorch_model.bin",
                               "restore the Dense folder's weights from the model's source")
    weight = state.get("linear.weight")
    if weight is None or tuple(weight.shape) != (layer.out_features, layer.in_features):
        raise ModelSourceError(f"{folder}: its linear.weight is missing or not {layer.out_features} x {layer.in_features}",
                               "restore the Dense folder from the model's source")
    out = {"linear.weight": weight.float()}
    if layer.bias:
        out["linear.bias"] = state["linear.bias"].float()
    return out


def _activation(name: str) -> Any:
    import torch

    short = name.rsplit(".", 1)[-1]
    if short not in _ACTIVATIONS:
        raise UnsupportedModelError(f"Dense activation {name!r} is not supported",
                                    f"mlcompress runs Dense modules with {', '.join(_ACTIVATIONS)}")
    return getattr(torch.nn, short)()


def dense_module(layer: Any) -> Any:
    """A torch module computing the Dense layer: activation(linear(x)), in float32, in eval mode."""
    import torch

    state = dense_weights(layer)
    linear = torch.nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
    linear.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items()})
    return torch.nn.Sequential(linear, _activation(layer.activation)).eval()


def dense_stack(layers: tuple[Any, ...] | list[Any]) -> Any:
    """Every Dense layer of a layout in order, as one torch module (an identity when there are none)."""
    import torch

    return torch.nn.Sequential(*(dense_module(layer) for layer in layers)).eval()


def write_dense(folder: Path, layer: Any, state: dict[str, Any], basis: Any = None) -> None:
    """Write a Dense layer with its weights ``state`` into ``folder``; ``basis`` (d_in x d_new) is folded in, so that
    it reads d_new-wide input."""
    from safetensors.torch import save_file

    state = dict(state)
    in_features = layer.in_features
    if basis is not None:
        state["linear.weight"] = state["linear.weight"] @ basis.float()
        in_features = int(basis.shape[1])
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    config = {"in_features": in_features, "out_features": layer.out_features, "bias": layer.bias,
              "activation_function": layer.activation}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
