"""`evaluate`: put a source and a candidate model side by side on the same work, and report retention."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcompress.artifacts import check_output
from mlcompress.errors import InputError
from mlcompress.languages import parse_languages

from .data import DataSource, parse_tasks
from .encoders import Encoder, load_encoder
from .retention import Score, gate, gate_error, summary

if TYPE_CHECKING:
    from .generative import LMLimits
    from .seq2seq import Seq2SeqLimits

DEFAULT_TASKS = "retrieval,pos,nli,sts,fidelity,efficiency"
_FALLBACK_SENTENCES = ["The weather is nice today.", "Das Wetter ist heute schön.", "Where is the train station?",
                       "Ich habe das Buch gestern gelesen.", "A man is playing a guitar on the street."]


@dataclass(frozen=True)
class Limits:
    """How much data each task reads (bounded so that a CPU run takes minutes)."""

    fidelity_sentences: int = 200
    mlm_sentences: int = 100
    retrieval_pairs: int | None = 1000
    pos_train_sentences: int = 2000
    pos_test_sentences: int = 500
    nli_train_rows: int = 1000  # rows [0, n) of xnli/dev-en train; tests read rows from n on
    nli_test_rows: int | None = 500
    sts_pairs: int | None = None
    latency_runs: int = 60  # batch-1 sentences per model, spread over the rounds
    throughput_batches: int = 6  # batches of 32 per model, spread over the rounds
    efficiency_rounds: int = 6  # interleaved rounds: every model compared is timed in each

    def capped(self, n: int) -> Limits:
        """These limits with every data count capped at ``n``."""
        from dataclasses import replace

        if n < 2:
            raise InputError(f"--max-examples {n} is too small", "give at least 2")
        counts = {k: min(v, n) if v is not None else n for k, v in asdict(self).items()
                  if k not in ("latency_runs", "throughput_batches", "efficiency_rounds")}
        return replace(self, **counts)


@dataclass
class EvalReport:
    """Everything eval measured: scores with retention, efficiency, what was skipped and why, and the gate's verdict."""

    source: dict[str, Any]
    candidate: dict[str, Any]
    languages: list[str]
    tasks: list[str]
    scores: list[Score]
    efficiency: dict[str, Any]
    skipped: list[dict[str, str]]
    gate: dict[str, Any]
    parameters: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    output: Path | None = None

    @property
    def passed(self) -> bool | None:
        """The gate's verdict (None when no --min-retention was given)."""
        return self.gate.get("passed")

    def retention(self, task: str, language: str, metric: str | None = None) -> float | None:
        """The retention of one score."""
        for s in self.scores:
            if s.task == task and s.language == language and (metric is None or s.metric == metric):
                return s.retention
        raise KeyError(f"no score for {task} {language} {metric or ''}")

    def as_dict(self) -> dict[str, Any]:
        """The JSON form written to report.json."""
        return {"source": self.source, "candidate": self.candidate, "languages": self.languages, "tasks": self.tasks,
                "gate": self.gate, "summary": summary(self.scores), "scores": [s.as_dict() for s in self.scores],
                "efficiency": self.efficiency, "skipped": self.skipped, "parameters": self.parameters,
                "seconds": self.seconds}

    def summary(self) -> str:
        """A few lines: retention per task, the lowest score, size and speed against the source, the gate's verdict."""
        from .report_summary import eval_summary

        return eval_summary(self)

    def __str__(self) -> str:
        return self.summary()


def detect_prefix(encoder: Encoder) -> str:
    """The model's own prefix ("query: " for E5 models), from its configuration or provenance (one detector for all stages)."""
    from mlcompress.embedding_profile import embedding_profile

    return embedding_profile(encoder.path, encoder.spec).prefix


def _check_output(output: str | os.PathLike[str] | None, overwrite: bool) -> None:
    if output is not None:
        check_output(output, overwrite, what="report folder")


def _plan(data: DataSource, tasks: list[str], languages: list[str],
          task_languages: dict[str, list[str]]) -> tuple[dict[str, list[str]], list[dict[str, str]]]:
    """Which languages each task runs on, and what is skipped for lack of data; a task with no data at all is an error."""
    plan, skipped = {}, []
    for task in tasks:
        langs = task_languages.get(task, languages)
        reasons = {lang: data.missing(task, lang) for lang in langs}
        ok = [lang for lang, why in reasons.items() if why is None]
        if not ok and task != "efficiency":
            detail = "; ".join(f"{lang}: {why}" for lang, why in reasons.items())
            raise InputError(f"task {task} has no data for any requested language ({detail})",
                             f"check --data (a folder laid out like ../shared/data), or drop {task} from --tasks")
        plan[task] = ok
        skipped += [{"task": task, "language": lang, "reason": why} for lang, why in reasons.items() if why]
    return plan, skipped


def evaluate(
    source: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    languages: str | list[str],
    tasks: str | list[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    min_retention: float | None = None,
    *,
    overwrite: bool = False,
    task_languages: dict[str, str | list[str]] | None = None,
    hub_data: dict[str, str] | None = None,
    limits: Limits | None = None,
    transfer: str = "auto",
    prefix: str | None = None,
    pooling: str = "auto",
    device: str | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    raise_on_fail: bool = False,
    progress: Callable[[str], None] | None = None,
    encoders: tuple[Encoder, Encoder] | None = None,
    within_languages: bool = False,
    efficiency: dict[str, Any] | None = None,
    lm_limits: LMLimits | None = None,
    seq2seq_limits: Seq2SeqLimits | None = None,
) -> EvalReport:
    """Evaluate ``candidate`` against ``source`` on ``tasks`` in ``languages``; write reports to ``output`` when given.

    ``hub_data`` maps "task:lang" to a datasets id (hf://NAME?config=C&split=S&columns=a,b or disk://PATH?columns=..);
    ``task_languages`` overrides the languages of one task; ``prefix`` is prepended to every sentence embedded
    (default: "query: " for E5 models); ``encoders`` passes already loaded models (reused across calls).
    ``within_languages`` skips (and lists as skipped) STS sets that pair a language with one outside ``languages``.
    ``efficiency`` is this candidate's entry of ``compare_efficiency`` (several candidates timed with the source in
    one interleaved measurement); without it the efficiency task times the source and the candidate together.
    With ``min_retention`` the report carries the gate's verdict; ``raise_on_fail`` raises GateError after writing it.

    A causal-LM source (config.json names a ...ForCausalLM or ...LMHeadModel, or a decoder bundle) runs the generative
    tasks instead (`generative`: perplexity, next_token, greedy, efficiency; ``tasks`` None: all of them), on held-out
    text, within ``lm_limits`` (`generative.LMLimits`). ``tasks`` None is DEFAULT_TASKS for an encoder.
    An encoder-decoder source (mT5, mBART, M2M100, NLLB) runs the seq2seq tasks (`seq2seq`: perplexity, next_token,
    greedy, translation) on Tatoeba pairs with English, within ``seq2seq_limits``.
    Without ``data_dir`` and ``hub_data`` the data folder is found as the pipeline finds it ($MLCOMPRESS_DATA, else
    ../shared/data where present).
    """
    if data_dir is None and not hub_data:
        from mlcompress.corpus import default_data_dir

        data_dir = default_data_dir()
    if encoders is None:
        from .lm_scorer import is_causal_lm

        if is_causal_lm(source, cache_dir):
            from .generative import evaluate_generative

            return evaluate_generative(source, candidate, languages, tasks, data_dir, output, min_retention,
                                       overwrite=overwrite, task_languages=task_languages, hub_data=hub_data,
                                       lm_limits=lm_limits, device=device, seed=seed, cache_dir=cache_dir,
                                       raise_on_fail=raise_on_fail, progress=progress)
        from .seq2seq_scorer import is_seq2seq

        if is_seq2seq(source, cache_dir):
            from .seq2seq import evaluate_seq2seq

            return evaluate_seq2seq(source, candidate, languages, tasks, data_dir, output, min_retention, overwrite=overwrite,
                                    hub_data=hub_data, limits=seq2seq_limits, device=device, seed=seed, cache_dir=cache_dir,
                                    raise_on_fail=raise_on_fail, progress=progress)
    return _evaluate_encoders(source, candidate, languages, DEFAULT_TASKS if tasks is None else tasks, data_dir, output,
                              min_retention, overwrite=overwrite, task_languages=task_languages, hub_data=hub_data,
                              limits=limits, transfer=transfer, prefix=prefix, pooling=pooling, device=device, seed=seed,
                              cache_dir=cache_dir, raise_on_fail=raise_on_fail, progress=progress, encoders=encoders,
                              within_languages=within_languages, efficiency=efficiency)


def _evaluate_encoders(source: str | os.PathLike[str], candidate: str | os.PathLike[str], languages: str | list[str],
                       tasks: str | list[str], data_dir: str | os.PathLike[str] | None, output: str | os.PathLike[str] | None,
                       min_retention: float | None, *, overwrite: bool, task_languages: dict[str, str | list[str]] | None,
                       hub_data: dict[str, str] | None, limits: Limits | None, transfer: str, prefix: str | None,
                       pooling: str, device: str | None, seed: int, cache_dir: str | os.PathLike[str] | None,
                       raise_on_fail: bool, progress: Callable[[str], None] | None, encoders: tuple[Encoder, Encoder] | None,
                       within_languages: bool, efficiency: dict[str, Any] | None) -> EvalReport:
    """`evaluate` for sentence encoders (the tasks of DEFAULT_TASKS)."""
    from .transfer import Recipe, resolve_mode

    limits = limits or Limits()
    say = progress or (lambda _msg: None)
    task_list, langs, per_task = _parse_request(tasks, languages, task_languages, min_retention)
    data = DataSource.open(data_dir, hub_data)
    plan, skipped = _plan(data, task_list, langs, per_task)
    mode = resolve_mode(transfer)
    _check_output(output, overwrite)

    t0 = time.perf_counter()
    src, cand = encoders if encoders is not None else _load_encoders(source, candidate, cache_dir, pooling, device, say)
    seconds = {"load": time.perf_counter() - t0}
    pre = detect_prefix(src) if prefix is None else prefix
    if mode == "finetune" and not ("finetune" in src.capabilities and "finetune" in cand.capabilities):
        mode = "probe"  # both models always get the same recipe
    recipe = Recipe(mode=mode, seed=seed)
    runners = {
        "fidelity": lambda: _fidelity(src, cand, data, plan["fidelity"], limits, pre, skipped),
        "retrieval": lambda: _retrieval(src, cand, data, plan["retrieval"], limits, pre),
        "pos": lambda: _pos(src, cand, data, plan["pos"], limits, recipe, skipped),
        "nli": lambda: _nli(src, cand, data, plan["nli"], limits, recipe, pre),
        "sts": lambda: _sts(src, cand, data, plan["sts"], limits, pre, langs if within_languages else None, skipped),
        "efficiency": lambda: efficiency or _efficiency({"candidate": cand}, src, data, plan["efficiency"], limits, pre)["candidate"],
    }
    scores, efficiency = _run_tasks(task_list, plan, runners, say, seconds)
    seconds["total"] = time.perf_counter() - t0
    parameters = {"languages": langs, "tasks": task_list, "task_languages": per_task, "min_retention": min_retention,
                  "transfer": recipe.mode, "seed": seed, "prefix": pre, "data": str(data.root) if data.root else None,
                  "hub_data": data.hub, "limits": asdict(limits)}
    report = EvalReport(src.describe() | {"size": src.size()}, cand.describe() | {"size": cand.size()}, langs, task_list, scores, efficiency, skipped,
                        gate(scores, min_retention), parameters, seconds)
    if output is not None:
        from .report import write_reports

        report.output = write_reports(report, Path(output), overwrite)
    if raise_on_fail and report.passed is False:
        raise gate_error(report.gate, str(report.output) if report.output else None)
    return report


def _parse_request(tasks: str | list[str], languages: str | list[str],
                   task_languages: dict[str, str | list[str]] | None,
                   min_retention: float | None) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """The tasks, the languages and each overridden task's languages, checked before any model loads."""
    task_list = parse_tasks(tasks)
    langs = parse_languages(languages)
    per_task = {t: parse_languages(v) for t, v in (task_languages or {}).items()}
    parse_tasks(list(per_task) or task_list)
    if min_retention is not None and not 0 < min_retention <= 10:
        raise InputError(f"--min-retention {min_retention} is out of range", "give a fraction such as 0.97")
    return task_list, langs, per_task


def _load_encoders(source: str | os.PathLike[str], candidate: str | os.PathLike[str],
                   cache_dir: str | os.PathLike[str] | None, pooling: str, device: str | None,
                   say: Callable[[str], None]) -> tuple[Encoder, Encoder]:
    """Load the source and the candidate model the same way, saying which one is loading."""
    say(f"loading {source}")
    src = load_encoder(source, cache_dir, pooling, device)
    say(f"loading {candidate}")
    cand = load_encoder(candidate, cache_dir, pooling, device)
    return src, cand


def _run_tasks(task_list: list[str], plan: dict[str, list[str]], runners: dict[str, Callable[[], Any]],
               say: Callable[[str], None], seconds: dict[str, float]) -> tuple[list[Score], dict[str, Any]]:
    """Run the tasks in order, timing each into ``seconds``: efficiency's measurements apart, the others' scores."""
    scores: list[Score] = []
    efficiency: dict[str, Any] = {}
    for task in task_list:
        t = time.perf_counter()
        say(f"{task}: {', '.join(plan[task]) or '-'}")
        if task == "efficiency":
            efficiency = runners[task]()
        else:
            scores += runners[task]()
        seconds[task] = time.perf_counter() - t
    return scores, efficiency


# --------------------------------------------------------------------------------------------------- tasks
def _fidelity(src: Encoder, cand: Encoder, data: DataSource, langs: list[str], limits: Limits, pre: str,
              skipped: list[dict[str, str]]) -> list[Score]:
    from .fidelity import embedding_cosine, layer_cka, linear_cka, top1_agreement

    out = []
    both = src.capabilities & cand.capabilities
    for lang in langs:
        sents, origin = data.sentences(lang, limits.fidelity_sentences)
        a, b = src.embed(sents, pre), cand.embed(sents, pre)
        if a.shape[1] == b.shape[1]:
            out.append(Score("fidelity", lang, "embedding_cosine", 1.0, embedding_cosine(a, b), len(sents), dataset=origin))
        else:
            out.append(Score("fidelity", lang, "embedding_cka", 1.0, linear_cka(a, b), len(sents), dataset=origin,
                             note=f"embedding sizes differ ({a.shape[1]} vs {b.shape[1]}): CKA instead of cosine"))
        if "layers" in both:
            cka = layer_cka(src.layers(sents, pre), cand.layers(sents, pre))
            out.append(Score("fidelity", lang, "cka_mean", 1.0, cka["mean"], len(sents), gated=False, dataset=origin,
                             details={"per_layer": cka["per_layer"], "last": cka["last"]},
                             note="linear CKA of mean-pooled hidden states at matching depths (diagnostic, not gated)"))
        else:
            skipped.append({"task": "fidelity", "language": lang, "reason": "CKA: a backend gives no hidden states"})
        if "mlm" in both:
            s_pred = src.mlm_predictions(sents[: limits.mlm_sentences])
            c_pred = cand.mlm_predictions(sents[: limits.mlm_sentences])
            same = [(sp, cp) for (st, sp), (ct, cp) in zip(s_pred, c_pred) if st == ct]
            if same:
                agree = top1_agreement([p for p, _ in same], [p for _, p in same])
                out.append(Score("fidelity", lang, "mlm_top1_agreement", 1.0, agree, sum(len(p) for p, _ in same),
                                 dataset=origin, note=f"{len(same)} of {len(s_pred)} sentences tokenised identically by both"))
            else:
                skipped.append({"task": "fidelity", "language": lang, "reason": "MLM: no sentence tokenised identically by both"})
        else:
            skipped.append({"task": "fidelity", "language": lang, "reason": "MLM agreement: a model has no masked-LM head"})
    return out


def _retrieval(src: Encoder, cand: Encoder, data: DataSource, langs: list[str], limits: Limits, pre: str) -> list[Score]:
    from .bootstrap import mean_interval, retrieval_outcomes
    from .retrieval import retrieval_accuracy

    out = []
    for lang in langs:
        bt = data.bitext(lang, limits.retrieval_pairs)
        embs = [(m.embed(bt.src, pre), m.embed(bt.tgt, pre)) for m in (src, cand)]
        res = [retrieval_accuracy(*e) for e in embs]
        hits = tuple(retrieval_outcomes(*e) for e in embs)
        out.append(Score("retrieval", f"{lang}-en", "accuracy", res[0]["accuracy"], res[1]["accuracy"], len(bt.src),
                         dataset=bt.origin, details={"source": res[0], "candidate": res[1]},
                         interval=mean_interval(hits, chance=1 / len(bt.src)).as_dict()))
    return out


def _pos(src: Encoder, cand: Encoder, data: DataSource, langs: list[str], limits: Limits, recipe: Any,
         skipped: list[dict[str, str]]) -> list[Score]:
    from .transfer import pos_transfer

    if "tokens" not in (src.capabilities & cand.capabilities):
        skipped += [{"task": "pos", "language": lang, "reason": "a backend gives no token-level outputs"} for lang in langs]
        return []
    train = data.pos_train(limits.pos_train_sentences)
    tests = {lang: data.pos_test(lang, limits.pos_test_sentences) for lang in langs}
    s, c = pos_transfer(src, train, tests, recipe), pos_transfer(cand, train, tests, recipe)
    return [Score("pos", lang, "accuracy", float(s[lang]), float(c[lang]), sum(len(w) for w in tests[lang].words),
                  dataset=tests[lang].origin, note=f"train: English, {len(train.words)} sentences; {recipe.mode}",
                  interval=_accuracy_interval(s[lang], c[lang], [t for sent in tests[lang].tags for t in sent]))
            for lang in langs]


def _accuracy_interval(s: Any, c: Any, gold: list[Any]) -> dict[str, Any] | None:
    """Paired-bootstrap intervals of a transfer accuracy (units: sentences or rows); chance is the majority label's share."""
    from collections import Counter

    from .bootstrap import ratio_interval

    if not (hasattr(s, "right") and hasattr(c, "right")) or not gold:
        return None
    majority = Counter(gold).most_common(1)[0][1] / len(gold)
    return ratio_interval((s.right, c.right), s.total, chance=majority).as_dict()


def _nli(src: Encoder, cand: Encoder, data: DataSource, langs: list[str], limits: Limits, recipe: Any, pre: str) -> list[Score]:
    from .transfer import nli_transfer

    train = data.nli_train(limits.nli_train_rows)
    tests = {lang: data.nli_test(lang, len(train.a), limits.nli_test_rows) for lang in langs}
    s, c = nli_transfer(src, train, tests, recipe, pre), nli_transfer(cand, train, tests, recipe, pre)
    return [Score("nli", lang, "accuracy", float(s[lang]), float(c[lang]), len(tests[lang].a), dataset=tests[lang].origin,
                  note=f"train: xnli/dev-en rows 0-{len(train.a)}; {recipe.mode}",
                  interval=_accuracy_interval(s[lang], c[lang], list(tests[lang].labels))) for lang in langs]


def _sts(src: Encoder, cand: Encoder, data: DataSource, langs: list[str], limits: Limits, pre: str,
         within: list[str] | None = None, skipped: list[dict[str, str]] | None = None) -> list[Score]:
    import re

    from .bootstrap import sts_interval
    from .sts import sts_spearman

    out, seen = [], set()
    for lang in langs:
        for pairs in data.sts(lang, limits.sts_pairs):
            if pairs.origin in seen:
                continue
            seen.add(pairs.origin)
            key = pairs.key or lang
            if within is not None and not set(re.findall(r"[a-z]{2,3}", key.split("(")[0])) <= set(within):
                if skipped is not None:
                    skipped.append({"task": "sts", "language": key, "reason": f"pairs a language outside {', '.join(within)}"})
                continue
            embs = [(e.embed(pairs.a, pre), e.embed(pairs.b, pre)) for e in (src, cand)]
            s, c = (sts_spearman(a, b, pairs.labels) for a, b in embs)
            out.append(Score("sts", pairs.key or lang, "spearman", s, c, len(pairs.a), dataset=pairs.origin, note=pairs.note,
                             interval=sts_interval((embs[0], embs[1]), pairs.labels).as_dict()))
    return out


def _efficiency_texts(data: DataSource | None, langs: list[str]) -> list[str]:
    """The sentences the efficiency task times: up to 64 per language with text, else a few built-in ones."""
    texts: list[str] = []
    for lang in langs if data is not None else []:
        if data.missing("fidelity", lang) is None:
            texts += data.sentences(lang, 64)[0]
    return texts or list(_FALLBACK_SENTENCES)


def _efficiency(candidates: dict[str, Encoder], src: Encoder, data: DataSource | None, langs: list[str], limits: Limits,
                pre: str) -> dict[str, dict[str, Any]]:
    """The source and every candidate timed in one interleaved measurement; per candidate, its efficiency entry."""
    from .efficiency import measure_together, paired_ratio

    if "source" in candidates:
        raise InputError("a candidate cannot be named 'source' in an efficiency comparison", "name it after its stage")
    texts = _efficiency_texts(data, langs)
    together = measure_together({"source": src, **candidates}, texts, runs=limits.latency_runs, rounds=limits.efficiency_rounds,
                                batches=limits.throughput_batches, prefix=pre)
    models = together["models"]
    out = {}
    for name in candidates:
        ratio = {}
        for key in ("parameters", "bytes_on_disk", "weight_file_bytes", "latency_ms_p50", "latency_ms_p95", "throughput_per_s",
                    "peak_memory_bytes"):
            a, b = models["source"].get(key), models[name].get(key)
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a:
                ratio[key] = b / a
        out[name] = {"source": models["source"], "candidate": models[name], "candidate_over_source": ratio,
                     "latency_ratio_per_round": paired_ratio(together, "source", name),
                     "sample_sentences": len(texts), "method": together["method"], "order": together["order"],
                     "measured_with": list(models)}
    return out


def compare_efficiency(source: Encoder, candidates: dict[str, Encoder], languages: str | list[str],
                       data_dir: str | os.PathLike[str] | None = None, limits: Limits | None = None,
                       prefix: str | None = None) -> dict[str, dict[str, Any]]:
    """Time the source and every candidate in one interleaved measurement, so that all their latencies compare.

    Returns, per candidate name, the efficiency entry ``evaluate`` reports (pass it as ``evaluate(..., efficiency=)``).
    """
    data = DataSource.open(data_dir, None) if data_dir is not None else None
    pre = detect_prefix(source) if prefix is None else prefix
    return _efficiency(candidates, source, data, parse_languages(languages), limits or Limits(), pre)
