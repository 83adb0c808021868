"""Short phase-1 ablations on dev data: which teacher layers to copy, which learning rate, which objective.

Each variant distils the bundled e5-small (trimmed to en+el) on ../shared/data/mono for the same short time
budget, then is scored on DEV data that the issue's bars do not use: el-en bitext retrieval on XNLI dev
(830 premises and 830 short hypotheses, rows are human translations) and the cosine of student and teacher
embeddings on held-out mono sentences. Step-0 figures (no training) come first.

    python bench/distill_ablation.py --time-budget 5m
    python bench/distill_ablation.py --time-budget 5m --variants "layers=0,2,4,6,8,10 lr=5e-4" "objective=bistil"
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers

from mlcompress.distill import Phase1Losses, TrainConfig, distill_general
from mlcompress.distill.loop import parse_duration
from mlcompress.distill.student import make_student
from mlcompress.sources import resolve_model

ROOT = Path(__file__).resolve().parents[1]
PAIRS = 400  # per kind (premises, hypotheses): enough to rank variants, small enough for a 2-core CPU
DEFAULT_VARIANTS = ["layers=1,3,5,7,9,11", "layers=0,2,4,6,8,10", "layers=0,1,2,3,4,11"]


def xnli_pairs(data: Path) -> dict[str, tuple[list[str], list[str]]]:
    """el/en premises (distinct) and one hypothesis per premise, from the row-aligned XNLI dev sets."""
    rows = {lang: [line.rstrip("\n").split("\t") for line in gzip.open(data / f"xnli/dev-{lang}.tsv.gz", "rt", encoding="utf-8")]
            for lang in ("el", "en")}
    keep = range(0, min(len(rows["el"]), len(rows["en"]), 3 * PAIRS), 3)
    return {"premise": ([rows["el"][i][0] for i in keep], [rows["en"][i][0] for i in keep]),
            "hypothesis": ([rows["el"][i][1] for i in keep], [rows["en"][i][1] for i in keep])}


def embed(model, tok, texts: list[str], prefix: str = "query: ") -> torch.Tensor:
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths per batch: little padding
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            b = tok([prefix + texts[j] for j in order[i:i + 64]], padding=True, truncation=True, max_length=128,
                    return_tensors="pt")
            h = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).float()
            out.append(F.normalize((h * m).sum(1) / m.sum(1), dim=-1))
    result = torch.empty(len(texts), out[0].shape[-1])
    result[order] = torch.cat(out)
    return result


def dev_scores(model, tok, pairs, held_out: list[str], teacher_held: torch.Tensor) -> dict[str, float]:
    scores = {}
    for name, (el, en) in pairs.items():
        a, b = embed(model, tok, el), embed(model, tok, en)
        sim, gold = a @ b.T, torch.arange(len(a))
        scores[f"xnli-{name}"] = round(((sim.argmax(1) == gold).float().mean() + (sim.argmax(0) == gold).float().mean()).item() / 2, 4)
    scores["cosine-held-out"] = round((embed(model, tok, held_out) * teacher_held).sum(-1).mean().item(), 4)
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "mlcompress-bench-ablation")
    ap.add_argument("--time-budget", default="5m")
    ap.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS,
                    help="space-separated key=value settings: layers, lr, batch, objective, hidden, attention, pooled, relational")
    args = ap.parse_args()
    transformers.utils.logging.set_verbosity_error()
    teacher_path = resolve_model("bundled:multilingual-e5-small").path
    tok = transformers.AutoTokenizer.from_pretrained(teacher_path)
    teacher = transformers.AutoModel.from_pretrained(teacher_path).eval()
    pairs = xnli_pairs(args.data)
    # held-out text: mono lines are training text, so take sentences from the end of the Tatoeba-free XNLI test set
    held = [line.split("\t")[0] for line in gzip.open(args.data / "xnli/test_unlabeled/test-el.tsv.gz", "rt", encoding="utf-8")][:450:3]
    held += [line.split("\t")[0] for line in gzip.open(args.data / "xnli/test_unlabeled/test-en.tsv.gz", "rt", encoding="utf-8")][:450:3]
    teacher_held = embed(teacher, tok, held)
    print("teacher", dev_scores(teacher, tok, pairs, held, teacher_held), flush=True)
    results = []
    for variant in args.variants:
        opts = dict(kv.split("=", 1) for kv in variant.split())
        start, _ = make_student(teacher, 2, opts.get("layers"))
        step0 = dev_scores(start.eval(), tok, pairs, held, teacher_held)
        objective = opts.get("objective", "embedding")
        config = TrainConfig(batch_size=int(opts.get("batch", 64 if objective == "embedding" else 16)),
                             lr=float(opts.get("lr", 2e-4)), device="cpu", time_budget=parse_duration(args.time_budget),
                             checkpoint_every=10**6, log_every=10, progress=False)
        target = args.out / variant.replace(" ", "_").replace("=", "-").replace(",", "")
        weights = {k: float(opts[k]) for k in ("hidden", "attention", "pooled", "relational") if k in opts}
        losses = Phase1Losses(**{**Phase1Losses.preset(objective).__dict__, **weights})
        r = distill_general("bundled:multilingual-e5-small", "en,el",
                            {"en": str(args.data / "mono/en.txt.gz"), "el": str(args.data / "mono/el.txt.gz")}, target,
                            objective=objective, layers=opts.get("layers"), losses=losses, trim_vocabulary=True, overwrite=True,
                            restart=True, train_config=config)
        student = transformers.AutoModel.from_pretrained(target).eval()  # its vocabulary is trimmed: its own tokenizer
        trained = dev_scores(student, transformers.AutoTokenizer.from_pretrained(target), pairs, held, teacher_held)
        row = {"variant": variant, "steps": r.steps, "tokens": r.tokens, "tokens_per_s": round(r.tokens_per_second),
               "step0": step0, "trained": trained}
        results.append(row)
        print(json.dumps(row), flush=True)
    (args.out / "ablation.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
