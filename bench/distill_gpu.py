"""Phase-1 distillation throughput (tokens/s): mlcompress's loop against a plain transformers loop, same run.

Teacher shaped like multilingual-e5-small (12 layers, hidden 384, 12 heads, FFN 1536, 30,000-token
vocabulary; random weights: throughput does not depend on them), 6-layer student (every 2nd layer),
sequence length 256, hidden-state and attention losses. The baseline is what a user writes by hand: bf16
autocast, eager attention with output_attentions=True. One GPU call:

    python bench/distill_gpu.py                      # on a GPU, the issue's setting (batch 128)
    python bench/distill_gpu.py --device cpu --small # a seconds-long smoke run on a CPU
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import BertConfig, BertModel

from mlcompress.distill.attention import use_capture_backend
from mlcompress.distill.general import Phase1Losses, phase1_loss
from mlcompress.distill.loop import TrainConfig, make_accelerator, train
from mlcompress.distill.student import hidden_pairs, make_student


def teacher_model(layers: int, hidden: int, heads: int, vocab: int, attn: str) -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=4 * hidden, max_position_embeddings=512, pad_token_id=1)
    model = BertModel(config)
    model.set_attn_implementation(attn)
    return model


def random_batches(vocab: int, batch: int, seq: int):
    def batch_for_step(step: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(step)
        return {"input_ids": torch.randint(5, vocab, (batch, seq), generator=g)}

    return batch_for_step


def baseline(args, device: torch.device) -> float:
    """Plain loop: eager attention returning probabilities, bf16 autocast, AdamW."""
    teacher = teacher_model(args.layers, args.hidden, args.heads, args.vocab, "eager").to(device).eval().requires_grad_(False)
    student, mapping = make_student(teacher, 2)
    student.to(device).train()
    student.pooler.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-4)
    pairs = hidden_pairs(mapping)
    batches = random_batches(args.vocab, args.batch, args.seq)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def step(i: int) -> None:
        ids = batches(i)["input_ids"].to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            with torch.no_grad():
                t = teacher(ids, output_hidden_states=True, output_attentions=True)
            s = student(ids, output_hidden_states=True, output_attentions=True)
            loss = sum(torch.nn.functional.mse_loss(s.hidden_states[a].float(), t.hidden_states[b].float()) for a, b in pairs)
            loss = loss + sum(torch.nn.functional.mse_loss(s.attentions[j].float(), t.attentions[m].float())
                              for j, m in enumerate(mapping))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(args.warmup):
        step(i)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + i)
    _sync(device)
    return args.batch * args.seq * args.steps / (time.perf_counter() - t0)


def ours(args, work: Path) -> tuple[float, str]:
    """mlcompress's loop: fused SDPA forward, probabilities recomputed for distilled layers only."""
    config = TrainConfig(steps=args.warmup + args.steps, batch_size=args.batch, lr=1e-4, device=args.device,
                         checkpoint_every=10**9, log_every=10**9, progress=False)
    accelerator = make_accelerator(config)
    teacher = teacher_model(args.layers, args.hidden, args.heads, args.vocab, "sdpa")
    use_capture_backend(teacher)
    student, mapping = make_student(teacher, 2)
    use_capture_backend(student)
    student.pooler.requires_grad_(False)
    teacher.eval().requires_grad_(False).to(accelerator.device)
    loss = phase1_loss(teacher, mapping, Phase1Losses(hidden=1.0, attention=1.0))
    batches = random_batches(args.vocab, args.batch, args.seq)
    train(student, loss, batches, TrainConfig(**{**config.__dict__, "steps": args.warmup}), work / "warm", accelerator)
    _sync(accelerator.device)
    t0 = time.perf_counter()
    train(student, loss, lambda i: batches(args.warmup + i),
          TrainConfig(**{**config.__dict__, "steps": args.steps}), work / "timed", accelerator)
    _sync(accelerator.device)
    return args.batch * args.seq * args.steps / (time.perf_counter() - t0), accelerator.mixed_precision


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--small", action="store_true", help="tiny shapes for a CPU smoke run")
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()
    args.layers, args.hidden, args.heads, args.vocab = 12, 384, 12, 30000
    if args.small:
        args.layers, args.hidden, args.heads, args.vocab, args.batch, args.seq, args.steps, args.warmup = 4, 64, 4, 1000, 8, 64, 3, 1
    transformers.utils.logging.set_verbosity_error()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {name}; teacher {args.layers} layers, hidden {args.hidden}, vocab {args.vocab}; student {args.layers // 2} layers; "
          f"batch {args.batch} x {args.seq} tokens; {args.steps} timed steps after {args.warmup} warm-up")
    results = {}
    if not args.skip_baseline:
        results["baseline_tokens_per_s"] = baseline(args, device)
        print(f"plain transformers loop (eager attention, output_attentions): {results['baseline_tokens_per_s']:,.0f} tokens/s")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as tmp:
        tps, precision = ours(args, Path(tmp))
    results["mlcompress_tokens_per_s"] = tps
    print(f"mlcompress distill loop (SDPA + captured Q/K, precision {precision}): {tps:,.0f} tokens/s")
    if device.type == "cuda":
        results["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(results))


if __name__ == "__main__":
    main()
