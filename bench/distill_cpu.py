"""Phase-1 training speed on this CPU: tokens/s for fp32, bf16 autocast, torch.compile, the teacher cache and
thread counts, in one run.

The real setting: bundled multilingual-e5-small trimmed to en+el, 12 -> 6 layers, the embedding objective's
sentence batches (64 sentences of similar length) and BiStil's packed blocks. Each setting runs the same
steps in interleaved rounds (timings on this machine drift by ~30% over minutes), after warm-up steps.
`cached` settings read the teacher's targets from disk (computed once, before the rounds: the teacher pass's
own tokens/s is printed, in PyTorch and, for pooled embeddings only, as the teacher's int8 ONNX export).
What `mixed_precision: auto` picks here is printed with the CPU's bf16 support.

    python bench/distill_cpu.py                      # fp32, bf16, fp32+compile, cached; 2 rounds
    python bench/distill_cpu.py --rounds 3 --steps 6 --no-compile --only fp32/eager/embedding,fp32/cached/embedding
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from mlcompress.distill.attention import use_capture_backend
from mlcompress.distill.general import Phase1Losses, block_batches, phase1_loss
from mlcompress.distill.loop import auto_precision, cpu_has_bf16
from mlcompress.distill.sentence_objective import sentence_loss, sentence_pool
from mlcompress.distill.student import hidden_pairs
from mlcompress.distill.teacher_targets import TeacherTargets, pair_by_teacher
from mlcompress.distill.data import mixed_blocks
from mlcompress.distill.student import make_student
from mlcompress.sources import resolve_model
from mlcompress.vocab_trim import trim

ROOT = Path(__file__).resolve().parents[1]


def setting_step(name: str, teacher, tok, texts, args, work: Path):
    """A function running one optimizer step of this setting; returns the real tokens it processed."""
    precision, compiled, objective = name.split("/")
    student, mapping = make_student(teacher, 2)
    if objective == "embedding":
        pool = sentence_pool(tok, texts, "query: ", 128, 0.3, 0, max_sentences=args.pool)
        targets = teacher_pass(teacher, pool, mapping, work, precision) if compiled == "cached" else None
        losses = Phase1Losses.preset("embedding")
        if targets is None:
            losses.crosslingual = 0.0  # pairs come from the cached embeddings; one term less, the same speed
        else:
            pair_by_teacher(pool, targets)
        batches = pool.batch_for_step(64, 0)
        loss_fn = sentence_loss(teacher, mapping, losses, targets=targets, languages=list(pool.ids))
    else:
        blocks, _ = mixed_blocks(tok, texts, 256, 64)
        batches = block_batches(blocks, 16, 0, teacher.get_input_embeddings().num_embeddings, tok.mask_token_id,
                                sorted(set(tok.all_special_ids)))
        use_capture_backend(teacher)  # attention probabilities from captured Q/K, as distill_general does
        use_capture_backend(student)
        loss_fn = phase1_loss(teacher, mapping, Phase1Losses.preset("bistil"))
    model = torch.compile(student, dynamic=True) if compiled == "compile" else student
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    counter = iter(range(10**9))

    def step() -> int:
        batch = batches(next(counter))
        with autocast:
            loss, _ = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mask = batch.get("attention_mask")
        return int(mask.sum()) if mask is not None else batch["input_ids"].numel()

    return step


def teacher_pass(teacher, pool, mapping, work: Path, precision: str) -> TeacherTargets:
    """The teacher's targets for the whole pool, computed once (and timed)."""
    targets = TeacherTargets(work / f"targets-{precision}", [t for _, t in hidden_pairs(mapping)])
    ids = {lang: pool.in_order(lang) for lang in pool.ids}
    t0 = time.perf_counter()
    targets.build(teacher, ids, pool.sizes(), pool.pad_id, autocast="bf16" if precision == "bf16" else None)
    seconds = time.perf_counter() - t0
    tokens = sum(len(r) for rows in ids.values() for r in rows)
    print(f"teacher pass ({precision}, PyTorch, pooled + {len(mapping) + 1} hidden states): {tokens:,} tokens in "
          f"{seconds:.0f} s = {tokens / seconds:,.0f} tokens/s", flush=True)
    return targets


def onnx_teacher_pass(teacher_dir: Path, texts_spec: dict[str, str], out: Path, tok, pool,
                      targets: TeacherTargets) -> None:
    """The teacher's int8 ONNX bundle (mlcompress's default export) as the teacher of the pass: tokens/s for pooled
    embeddings (it has no hidden-state outputs), and their cosine to the PyTorch teacher's on the same sentences."""
    from mlcompress.export import export, runtime

    target = out / "teacher-onnx-int8"
    export(teacher_dir, target, bundle=True, overwrite=True, measure_latency=False, texts=texts_spec)
    model = runtime.load(target)
    rows = {lang: pool.in_order(lang)[:2000] for lang in pool.ids}
    sentences = [tok.decode(r, skip_special_tokens=True).removeprefix("query: ") for lang in rows for r in rows[lang]]
    model.encode(sentences[:64], batch_size=64)
    t0 = time.perf_counter()
    onnx = torch.from_numpy(np.asarray(model.encode(sentences, batch_size=64)))
    seconds = time.perf_counter() - t0
    tokens = sum(len(r) for lang in rows for r in rows[lang])
    ref = torch.cat([targets.pooled(lang, len(rows[lang])) for lang in rows])
    cosine = torch.nn.functional.cosine_similarity(onnx.float(), ref, dim=-1)
    print(f"teacher pass (int8 ONNX bundle, pooled embeddings only): {tokens:,} tokens in {seconds:.0f} s = "
          f"{tokens / seconds:,.0f} tokens/s; cosine to the PyTorch teacher's: mean {cosine.mean():.4f}, "
          f"min {cosine.min():.4f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per setting and round")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--threads", default=None, help="comma-separated intra-op thread counts to compare (e.g. 1,2)")
    ap.add_argument("--pool", type=int, default=1500, help="sentences per language of the embedding settings")
    ap.add_argument("--only", default=None, help="comma-separated settings to run, e.g. fp32/eager/embedding,fp32/cached/embedding")
    ap.add_argument("--onnx-teacher", action="store_true", help="also time the teacher pass on the teacher's int8 ONNX bundle")
    args = ap.parse_args()
    transformers.utils.logging.set_verbosity_error()
    print(f"CPU bf16 support (AVX512-BF16 or AMX): {cpu_has_bf16()}; mixed_precision auto -> {auto_precision(True)}; "
          f"torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, threads {torch.get_num_threads()}")
    out = Path(tempfile.mkdtemp(prefix="mlcompress-distill-cpu-"))
    texts_spec = {"en": str(args.data / "mono/en.txt.gz"), "el": str(args.data / "mono/el.txt.gz")}
    teacher_dir = trim(resolve_model("bundled:multilingual-e5-small").path, "en,el", texts_spec, out / "teacher").output
    tok = transformers.AutoTokenizer.from_pretrained(teacher_dir)
    teacher = transformers.AutoModel.from_pretrained(teacher_dir).eval().requires_grad_(False)
    from mlcompress.corpus import parse_corpora

    texts = {lang: [line for c in cs for line in c.lines()][:3000] for lang, cs in parse_corpora(texts_spec).items()}
    # torch.compile is tried on the fp32 embedding objective (compiling takes minutes here)
    names = [f"{p}/{c}/{o}" for o in ("embedding", "bistil") for p in ("fp32", "bf16")
             for c in (["eager"] + ([] if args.no_compile or p == "bf16" or o == "bistil" else ["compile"])
                       + (["cached"] if o == "embedding" and (p == "fp32" or cpu_has_bf16()) else []))]
    names = args.only.split(",") if args.only else names
    threads = [int(t) for t in args.threads.split(",")] if args.threads else [torch.get_num_threads()]
    steps, rates = {}, {}
    for name in names:
        t0 = time.perf_counter()
        steps[name] = setting_step(name, teacher, tok, texts, args, out)
        for _ in range(2):  # warm-up (and compilation)
            steps[name]()
        print(f"{name}: ready in {time.perf_counter() - t0:.0f} s (2 warm-up steps included)", flush=True)
    if args.onnx_teacher:
        pool = sentence_pool(tok, texts, "query: ", 128, 0.3, 0, max_sentences=args.pool)
        targets = TeacherTargets(out / "targets-fp32", [t for _, t in hidden_pairs(make_student(teacher, 2)[1])])
        onnx_teacher_pass(teacher_dir, texts_spec, out, tok, pool, targets)
    for r in range(args.rounds):
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            for name in names:
                t0, tokens = time.perf_counter(), 0
                for _ in range(args.steps):
                    tokens += steps[name]()
                rate = tokens / (time.perf_counter() - t0)
                rates.setdefault((name, n_threads), []).append(rate)
                print(f"round {r + 1} {name} threads {n_threads}: {rate:,.0f} tokens/s", flush=True)
    print("\nmedian tokens/s over rounds (real tokens, padding excluded)")
    for (name, n_threads), values in rates.items():
        print(f"  {name:26s} threads {n_threads}: {statistics.median(values):8,.0f}  ({', '.join(f'{v:,.0f}' for v in values)})")


if __name__ == "__main__":
    main()
