"""An opt-in cache of exported ONNX graphs, keyed by what the graph is made from.

torch's dynamo exporter takes 10-25 s even for a tiny model on a 2-core CPU, and exporting one model several times
(another quantisation, a rerun with another threshold, an accuracy-aware search, the test suite) traces the same
module again each time. With ``MLCOMPRESS_GRAPH_CACHE`` set to a folder, the fp32 graph of a module is stored there
after its first export and copied back on the next. The key is everything the graph depends on: the module's
structure and plain attributes (and its config), every parameter and buffer (dtype, shape, bytes), the example inputs,
the I/O names and dynamic axes, the exporter's settings, and the versions of torch, onnx, onnxscript and transformers
and of mlcompress's own export code. Unset (the default), nothing is cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ENV = "MLCOMPRESS_GRAPH_CACHE"
_PLAIN = (bool, int, float, str, type(None))
_WHERE = ("name_or_path", "_name_or_path")  # where a model was loaded from: not what its graph is


def cache_dir() -> Path | None:
    """The cache folder named by ``MLCOMPRESS_GRAPH_CACHE``, or None (no caching)."""
    value = os.environ.get(ENV, "").strip()
    return Path(value) if value else None


def _attributes(module: Any) -> dict[str, Any]:
    """The plain attributes of a module and its submodules (flags that change forward, e.g. a pooling mode)."""
    out: dict[str, Any] = {}
    for name, sub in module.named_modules():
        plain = {k: v for k, v in vars(sub).items()
                 if not k.startswith("_") and k not in _WHERE and isinstance(v, _PLAIN)}
        config = getattr(sub, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            plain["config"] = {k: v for k, v in config.to_dict().items() if k not in _WHERE}
        out[name] = plain
    return out


def _versions() -> dict[str, str]:
    """Versions of the libraries the graph comes from, and a digest of this package's export code."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "onnx", "onnxscript", "transformers"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "-"
    code = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        code.update(path.read_bytes())
    versions["mlcompress.export"] = code.hexdigest()
    return versions


def graph_key(module: Any, inputs: Any, settings: dict[str, Any]) -> str:
    """The cache key of exporting ``module`` on the example ``inputs`` (tensors, nested) with ``settings``."""
    import torch

    digest = hashlib.sha256()
    digest.update(json.dumps({"repr": repr(module), "attributes": _attributes(module), "settings": settings,
                              "versions": _versions()}, sort_keys=True, default=str).encode())
    tensors = [(f"state.{k}", v) for k, v in module.state_dict(keep_vars=False).items()]
    tensors += [(f"input.{i}", t) for i, t in enumerate(torch.utils._pytree.tree_leaves(inputs))
                if isinstance(t, torch.Tensor)]
    for name, tensor in tensors:
        t = tensor.detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def cached_export(path: Path, key: Callable[[], str], export: Callable[[Path], None]) -> bool:
    """Write the graph to ``path``: from the cache when it holds ``key()``, else by ``export(path)`` and then stored
    (atomically, so concurrent processes never read half a file). Returns True on a cache hit."""
    root = cache_dir()
    if root is None:
        export(path)
        return False
    entry = root / f"{key()}.onnx"
    if entry.is_file():
        shutil.copyfile(entry, path)
        return True
    export(path)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{entry.name}.{uuid.uuid4().hex}.tmp"
    shutil.copyfile(path, tmp)
    os.replace(tmp, entry)
    return False
