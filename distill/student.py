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


def parse_layers(layers: str | list[int] | None, n_teacher_layers: int) -> list[int] | None:
    """Teacher layers (0-based) to copy, from ``"1,3,5"`` or a list; sorted, distinct and in range."""
    if layers is None or layers == "":
        return None
    try:
        picked = [int(x) for x in (layers.split(",") if isinstance(layers, str) else layers)]
    except ValueError as exc:
        raise InputError(f"cannot read teacher layers {layers!r}", "give 0-based layer numbers, e.g. 0,2,4,7,9,11") from exc
    if not picked or sorted(set(picked)) != picked or picked[0] < 0 or picked[-1] >= n_teacher_layers:
        raise InputError(f"teacher layers {layers!r} must be distinct, increasing and within 0..{n_teacher_layers - 1}",
                         "e.g. 1,3,5,7,9,11 (every second layer)")
    return picked


def make_student(teacher: torch.nn.Module, every_k: int = 2,
                 layers: str | list[int] | None = None) -> tuple[torch.nn.Module, list[int]]:
    """A copy of ``teacher`` that keeps every k-th layer (or the listed ``layers``); returns it and its layer map."""
    n_layers = len(encoder_layers(teacher))
    mapping = parse_layers(layers, n_layers) or layer_map(n_layers, every_k)
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


# --- narrower students -----------------------------------------------------------------------------------------
# A student of width d_s < d_t lives in a d_s-dimensional subspace of the teacher's residual stream, spanned by
# the orthonormal columns of a basis P (d_t x d_s): weights reading the stream are multiplied by P, weights
# writing it by P^T. Attention heads keep their number and lose dimensions; FFN neurons are pruned; both keep the
# coordinates that carry most of the teacher's product weight norm. The same P maps student hidden states back
# (h_t ~ P h_s) for the hidden-state loss, which then matches the teacher's states within that subspace.

PROJECTION_FILE = "hidden_projection.safetensors"  # P of a narrower phase-1 student, beside its weights
_READS = ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
          "embeddings.token_type_embeddings.weight", "decoder.weight")
_SQUARE = ("pooler.dense", "lm_head.dense", "predictions.transform.dense")


def principal_basis(states: torch.Tensor, width: int) -> torch.Tensor:
    """Orthonormal (d, width) basis of the directions where the rows of ``states`` (..., d) carry most energy."""
    x = states.reshape(-1, states.shape[-1]).double()
    values, vectors = torch.linalg.eigh(x.T @ x)
    return vectors[:, values.argsort(descending=True)[:width]].float().contiguous()


def check_hidden_size(config: object, hidden_size: int) -> None:
    """Refuse a student width the teacher's config cannot be narrowed to (before anything is written)."""
    d_t, heads = int(getattr(config, "hidden_size")), int(getattr(config, "num_attention_heads"))
    if getattr(config, "intermediate_size", None) is None:
        raise UnsupportedModelError(f"{getattr(config, 'model_type', 'this model')} has no intermediate_size in its config",
                                    "narrower students need a BERT/XLM-R-style encoder; leave --hidden-size unset")
    if not (0 < hidden_size < d_t) or hidden_size % heads:
        valid = ", ".join(str(heads * k) for k in range(1, d_t // heads))
        raise InputError(f"student hidden size {hidden_size} must be below the teacher's {d_t} and a multiple of its "
                         f"{heads} attention heads", f"pick one of: {valid}")


def _narrow_norm(value: torch.Tensor, kind: str, P: torch.Tensor) -> torch.Tensor:
    """A LayerNorm parameter in the subspace: the diagonal of P^T diag(gain) P for the gain, P^T b for the bias."""
    return (P * P).T @ value if kind == "weight" else P.T @ value


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    return scores.topk(k).indices.sort().values


def narrow_student(student: torch.nn.Module, hidden_size: int,
                   basis: torch.Tensor | None = None) -> tuple[torch.nn.Module, torch.Tensor]:
    """A copy of ``student`` at width ``hidden_size`` initialised by projection; returns it and the basis P (d_t, d_s).

    ``basis`` defaults to the principal directions of the word embeddings; pass one computed from the
    teacher's hidden states on the training text for a better fit.
    """
    config = student.config
    check_hidden_size(config, hidden_size)
    d_t, heads, ff_t = int(config.hidden_size), int(config.num_attention_heads), int(config.intermediate_size)
    d_s, hd_t, hd_s = hidden_size, d_t // heads, hidden_size // heads
    ff_s = max(1, round(ff_t * d_s / d_t))
    if basis is None:
        basis = principal_basis(student.get_input_embeddings().weight.detach(), d_s)
    if tuple(basis.shape) != (d_t, d_s):
        raise InputError(f"projection basis has shape {tuple(basis.shape)}, expected ({d_t}, {d_s})",
                         "compute it with principal_basis(states, hidden_size)")
    P = basis.float()
    state = {k: v.detach().float() for k, v in student.state_dict().items()}
    prefix = _layers_prefix(student)
    out: dict[str, torch.Tensor] = {}
    per_layer: dict[str, dict[str, torch.Tensor]] = {}
    for name, value in state.items():
        if name.startswith(prefix):
            index, rest = name[len(prefix):].split(".", 1)
            per_layer.setdefault(index, {})[rest] = value
            continue
        if name.endswith(_READS):
            out[name] = value @ P
        elif "LayerNorm" in name or "layer_norm" in name:
            out[name] = _narrow_norm(value, name.rpartition(".")[2], P)
        elif any(f"{s}.weight" in name for s in _SQUARE):
            out[name] = P.T @ value @ P
        elif any(f"{s}.bias" in name for s in _SQUARE):
            out[name] = P.T @ value
        elif d_t in value.shape:
            raise UnsupportedModelError(f"do not know how to narrow {name} {tuple(value.shape)}",
                                        "narrower students support BERT/XLM-R-style encoders; leave --hidden-size unset")
        else:
            out[name] = value
    for index, layer in per_layer.items():
        for rest, value in _narrow_layer(layer, P, heads, hd_t, hd_s, ff_s).items():
            out[f"{prefix}{index}.{rest}"] = value
    new_config = copy.deepcopy(config)
    new_config.hidden_size, new_config.intermediate_size = d_s, ff_s
    narrow = type(student)(new_config)
    narrow.load_state_dict(out, strict=True)
    narrow.to(next(student.parameters()).dtype)
    return narrow, P


def _narrow_layer(w: dict[str, torch.Tensor], P: torch.Tensor, heads: int, hd_t: int, hd_s: int,
                  ff_s: int) -> dict[str, torch.Tensor]:
    """One BERT-style layer at the narrower width (names relative to the layer)."""
    q, k, v = (f"attention.self.{n}" for n in ("query", "key", "value"))
    o, up, down = "attention.output.dense", "intermediate.dense", "output.dense"
    needed = [f"{n}.weight" for n in (q, k, v, o, up, down)]
    if any(n not in w for n in needed):
        raise UnsupportedModelError("the encoder layers do not have BERT-style attention/FFN weights",
                                    "narrower students support BERT/XLM-R-style encoders; leave --hidden-size unset")

    def per_head(scores: torch.Tensor) -> torch.Tensor:
        return torch.cat([_top(scores[h * hd_t:(h + 1) * hd_t], hd_s) + h * hd_t for h in range(heads)])

    qk = per_head(w[f"{q}.weight"].norm(dim=1) * w[f"{k}.weight"].norm(dim=1))
    vo = per_head(w[f"{v}.weight"].norm(dim=1) * w[f"{o}.weight"].norm(dim=0))
    ff = _top(w[f"{up}.weight"].norm(dim=1) * w[f"{down}.weight"].norm(dim=0), ff_s)
    rescale = (hd_s / hd_t) ** 0.5  # the student divides q.k by sqrt(hd_s), the teacher by sqrt(hd_t)
    out: dict[str, torch.Tensor] = {}
    for rest, value in w.items():
        module, _, kind = rest.rpartition(".")
        if module in (q, k, v):
            rows = vo if module == v else qk
            scale = rescale if module == q else 1.0
            out[rest] = (value[rows] @ P if kind == "weight" else value[rows]) * scale
        elif module == up:
            out[rest] = value[ff] @ P if kind == "weight" else value[ff]
        elif module in (o, down):
            cols = vo if module == o else ff
            out[rest] = P.T @ value[:, cols] if kind == "weight" else P.T @ value
        elif "LayerNorm" in module:
            out[rest] = _narrow_norm(value, kind, P)
        else:
            raise UnsupportedModelError(f"do not know how to narrow layer weight {rest}",
                                        "narrower students support BERT/XLM-R-style encoders; leave --hidden-size unset")
    return out
