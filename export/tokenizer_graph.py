"""The tokenizer inside the graph (`--tokenizer-in-graph`): one ONNX model that takes strings and returns what the
bundle's model returns, runnable with onnxruntime and onnxruntime-extensions only (C/C++, Java, C#, mobile hosts that
have no Hugging Face tokenizers).

The tokenizer.json of a SentencePiece-Unigram vocabulary (XLM-R, multilingual-E5 and their trims) becomes a
SentencePiece model, pieces in the (trimmed) id order, for onnxruntime-extensions' ``SentencepieceTokenizer`` (the
SentencePiece library itself). Standard ONNX operators around it add the bundle's prefix (``StringConcat``), truncate
to ``max_length`` with ``<s>``/``</s>`` kept, and pad to the longest text with the attention mask, as the Python
runtime does. The result is merged with the model graph in front of its ``input_ids``/``attention_mask``.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from mlcompress.errors import InputError

TEXT_MODEL = "model_with_tokenizer.onnx"
TEXT_INPUT = "text"
CONTRIB = "ai.onnx.contrib"  # onnxruntime-extensions' operator domain
WHITESPACE = r"[\t\n\x{0B}\f\r\x{85}\p{Z}]"  # Unicode White_Space (Rust's char::is_whitespace), in RE2 syntax
_HINT = "export the bundle without --tokenizer-in-graph (its tokenizer.json works with any Hugging Face tokenizers port)"


TEXT_TASKS = ("sentence-embedding", "sequence-classification")  # one output row per text: no tokens needed to read it


def check_supported(tokenizer_json: dict[str, Any], task: str) -> None:
    """Refuse, before any export work, a token-level head (its outputs mean nothing without the tokens), a tokenizer
    the in-graph form cannot reproduce, or a missing onnxruntime-extensions."""
    if task not in TEXT_TASKS:
        raise InputError(f"--tokenizer-in-graph with a {task} head: its per-token outputs need the tokens, which the "
                         "in-graph model does not return", f"use it with {' or '.join(TEXT_TASKS)}; " + _HINT)
    _extensions_version()
    _template_specials(tokenizer_json)
    if _kind(tokenizer_json) == "WordPiece":
        bert_tokenizer_attributes(tokenizer_json)
    else:
        sentencepiece_model(tokenizer_json)


def sentencepiece_model(tokenizer_json: dict[str, Any]) -> bytes:
    """A serialised SentencePiece ModelProto with the Unigram pieces, scores and normaliser of ``tokenizer_json``.

    Ids are the pieces' positions in tokenizer.json, so a trimmed vocabulary keeps its own ids; special tokens are
    control pieces (never produced from text), the unknown piece is SentencePiece's unk."""
    from sentencepiece import sentencepiece_model_pb2 as spm

    model = tokenizer_json.get("model") or {}
    if model.get("type") != "Unigram" or model.get("byte_fallback"):
        raise InputError(f"--tokenizer-in-graph: the tokenizer is a {model.get('type')} model"
                         f"{' with byte fallback' if model.get('byte_fallback') else ''}; the in-graph tokenizer "
                         "supports SentencePiece-Unigram vocabularies (XLM-R, multilingual-E5 and their trims)", _HINT)
    _check_text_handling(tokenizer_json)
    specials = {int(t["id"]) for t in tokenizer_json.get("added_tokens") or [] if t.get("special")}
    unk = model.get("unk_id")
    proto = spm.ModelProto()
    kinds = spm.ModelProto.SentencePiece
    for i, (piece, score) in enumerate(model["vocab"]):
        entry = proto.pieces.add()
        entry.piece, entry.score = piece, float(score)
        entry.type = kinds.UNKNOWN if i == unk else kinds.CONTROL if i in specials else kinds.NORMAL
    if unk is None:
        raise InputError("--tokenizer-in-graph: the Unigram tokenizer has no unknown token", _HINT)
    bos, eos = _template_specials(tokenizer_json)
    trainer = proto.trainer_spec
    trainer.model_type, trainer.vocab_size = spm.TrainerSpec.UNIGRAM, len(proto.pieces)
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = int(unk), bos, eos, -1
    norm = proto.normalizer_spec
    charsmap = _precompiled_charsmap(tokenizer_json.get("normalizer"))
    norm.name = "nmt_nfkc" if charsmap else "identity"
    norm.precompiled_charsmap = charsmap
    norm.add_dummy_prefix = norm.remove_extra_whitespaces = norm.escape_whitespaces = True
    return proto.SerializeToString()


def _precompiled_charsmap(normalizer: dict[str, Any] | None) -> bytes:
    """The character map SentencePiece normalises with: the Precompiled normaliser's own (XLM-R's nmt_nfkc), or
    SentencePiece's built-in NFKC map for an NFKC normaliser, or b"" (none); refuse normalisers it would not apply."""
    steps = (normalizer or {}).get("normalizers") if (normalizer or {}).get("type") == "Sequence" else [normalizer] if normalizer else []
    charsmap = b""
    for step in steps:
        if step.get("type") == "Precompiled":
            charsmap = base64.b64decode(step.get("precompiled_charsmap") or "")
        elif step.get("type") == "NFKC":
            charsmap = _builtin_charsmap("nfkc")
        elif not (step.get("type") == "Replace" and (step.get("pattern") or {}).get("Regex") == " {2,}"):
            raise InputError(f"--tokenizer-in-graph: the tokenizer normalises with {step.get('type')}, which "
                             "SentencePiece does not reproduce", _HINT)  # ' {2,}' -> ' ': SentencePiece's own whitespace rule
    return charsmap


def _builtin_charsmap(rule: str) -> bytes:
    """SentencePiece's precompiled map of a built-in normalisation ``rule`` (its trainer is the only way to get one)."""
    import io

    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2 as spm

    writer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(["a b c d e f g h"] * 10), model_writer=writer,
                                             vocab_size=12, model_type="char", normalization_rule_name=rule, minloglevel=2)
    proto = spm.ModelProto()
    proto.ParseFromString(writer.getvalue())
    return proto.normalizer_spec.precompiled_charsmap


def _check_text_handling(tokenizer_json: dict[str, Any]) -> None:
    """Require SentencePiece's own whitespace handling: split on whitespace, then Metaspace (``▁`` prepended), as
    transformers 5 builds XLM-R-family tokenizers. Metaspace alone keeps a trailing space as a ``▁`` token, which
    SentencePiece strips, so it is refused rather than reproduced wrongly."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    kinds = [step.get("type") for step in (pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre])]
    meta = next((step for step in (pre.get("pretokenizers") or [pre]) if step.get("type") == "Metaspace"), {})
    if kinds != ["WhitespaceSplit", "Metaspace"] or meta.get("replacement") != "\u2581" \
            or meta.get("prepend_scheme", "always") != "always":
        raise InputError(f"--tokenizer-in-graph: the tokenizer pre-tokenizes with {' + '.join(map(str, kinds)) or 'nothing'}"
                         "; the in-graph SentencePiece reproduces WhitespaceSplit + Metaspace('\u2581', prepended), "
                         "the pipeline transformers 5 gives XLM-R-family tokenizers",
                         "load and save the tokenizer with transformers 5 (AutoTokenizer), or " + _HINT)


def _template_specials(tokenizer_json: dict[str, Any]) -> tuple[int, int]:
    """The ids that the post-processor puts around one text (``<s> $A </s>``, ``[CLS] $A [SEP]``); refuse others."""
    post = tokenizer_json.get("post_processor") or {}
    if post.get("type") in ("BertProcessing", "RobertaProcessing"):
        return int(post["cls"][1]), int(post["sep"][1])
    single = post.get("single") or []
    kinds = [next(iter(item)) for item in single]
    if post.get("type") != "TemplateProcessing" or kinds != ["SpecialToken", "Sequence", "SpecialToken"]:
        raise InputError("--tokenizer-in-graph: the tokenizer's post-processor is not '<s> $A </s>' (or "
                         "'[CLS] $A [SEP]')", _HINT)
    specials = post.get("special_tokens") or {}
    bos, eos = (specials[single[i]["SpecialToken"]["id"]]["ids"][0] for i in (0, 2))
    return int(bos), int(eos)


def tokenizer_graph(tokenizer_json: dict[str, Any], prefix: str, max_length: int, pad_id: int, opset: int) -> Any:
    """An ONNX model: ``text`` (strings, [batch]) -> ``input_ids`` and ``attention_mask`` (int64, [batch, sequence]),
    the Python runtime's inputs: prefix added, at most ``max_length`` tokens with ``<s>``/``</s>`` (``[CLS]``/``[SEP]``)
    kept, padded. SentencePiece-Unigram vocabularies tokenize the batch at once; WordPiece ones text by text in a
    Loop (onnxruntime-extensions' BertTokenizer takes one text, or a pair)."""
    from onnx import TensorProto, helper

    bos, eos = _template_specials(tokenizer_json)
    scalars = {"nbest": (TensorProto.INT64, 0), "alpha": (TensorProto.FLOAT, 0.0), "no": (TensorProto.BOOL, False),
               "zero": (TensorProto.INT64, 0), "one": (TensorProto.INT64, 1), "two": (TensorProto.INT64, 2),
               "bos": (TensorProto.INT64, bos), "eos": (TensorProto.INT64, eos), "room": (TensorProto.INT64, max_length - 2)}
    vectors = {"prefix": (TensorProto.STRING, prefix.encode("utf-8")), "space": (TensorProto.STRING, b" "),
               "whitespace": (TensorProto.STRING, WHITESPACE.encode("utf-8")), "pad": (TensorProto.INT64, pad_id),
               "zero_1d": (TensorProto.INT64, 0), "one_1d": (TensorProto.INT64, 1),
               "minus_one_1d": (TensorProto.INT64, -1), "end_1d": (TensorProto.INT64, 2**62)}
    inits = [helper.make_tensor(name, kind, [], [value]) for name, (kind, value) in scalars.items()]
    inits += [helper.make_tensor(name, kind, [1], [value]) for name, (kind, value) in vectors.items()]
    n = helper.make_node
    words = _wordpiece_nodes(n, tokenizer_json) if _kind(tokenizer_json) == "WordPiece" else [
        # WhitespaceSplit: every Unicode whitespace character separates words, as a space does for SentencePiece
        n("StringRegexReplace", ["prefixed", "whitespace", "space"], ["spaced"], domain=CONTRIB, global_replace=1),
        n("SentencepieceTokenizer", ["spaced", "nbest", "alpha", "no", "no", "no", "no"], ["tokens32", "splits", "_"],
          domain=CONTRIB, model=sentencepiece_model(tokenizer_json))]
    nodes = [n("StringConcat", ["prefix", TEXT_INPUT], ["prefixed"]), *words, *_dense_nodes(n)]
    inits.append(helper.make_tensor("nothing", TensorProto.INT64, [0], []))
    graph = helper.make_graph(nodes, "tokenizer", [helper.make_tensor_value_info(TEXT_INPUT, TensorProto.STRING, ["batch"])],
                              [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
                               for name in ("input_ids", "attention_mask")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(CONTRIB, 1)])


def _dense_nodes(n: Any) -> list[Any]:
    """Nodes from SentencePiece's ragged output (flat ``tokens32``, row ``splits``) to padded ``input_ids`` and
    ``attention_mask``: row r, position p holds <s> at 0, token p-1 of the row up to its (truncated) length L, </s>
    at L+1, then padding. A padding value after the last token makes the gather safe when every row is empty."""
    from onnx import TensorProto

    return [
        n("Cast", ["tokens32"], ["tokens"], to=TensorProto.INT64),
        n("Concat", ["tokens", "pad"], ["tokens_padded"], axis=0),
        n("Size", ["tokens"], ["total"]),
        n("Slice", ["splits", "zero_1d", "minus_one_1d"], ["starts"]),
        n("Slice", ["splits", "one_1d", "end_1d"], ["ends"]),
        n("Sub", ["ends", "starts"], ["full_lengths"]),
        n("Min", ["full_lengths", "room"], ["lengths"]),
        n("ReduceMax", ["lengths"], ["longest"], keepdims=0),
        n("Add", ["longest", "two"], ["width"]),
        n("Range", ["zero", "width", "one"], ["positions"]),
        n("Unsqueeze", ["positions", "zero_1d"], ["p"]),  # [1, width]
        n("Unsqueeze", ["lengths", "one_1d"], ["L"]),  # [batch, 1]
        n("Unsqueeze", ["starts", "one_1d"], ["S"]),
        n("Add", ["S", "p"], ["S_p"]),
        n("Sub", ["S_p", "one"], ["at"]),
        n("Clip", ["at", "zero", "total"], ["at_safe"]),
        n("Gather", ["tokens_padded", "at_safe"], ["content"], axis=0),
        n("Equal", ["p", "zero"], ["is_bos"]),
        n("Add", ["L", "one"], ["L_1"]),
        n("Equal", ["p", "L_1"], ["is_eos"]),
        n("LessOrEqual", ["p", "L"], ["is_token"]),
        n("Add", ["L", "two"], ["L_2"]),
        n("Less", ["p", "L_2"], ["is_real"]),
        n("Where", ["is_token", "content", "pad"], ["body"]),
        n("Where", ["is_eos", "eos", "body"], ["with_eos"]),
        n("Where", ["is_bos", "bos", "with_eos"], ["input_ids"]),
        n("Cast", ["is_real"], ["attention_mask"], to=TensorProto.INT64),
    ]


def write_text_model(model: Path, out: Path, tokenizer_json: dict[str, Any], prefix: str, max_length: int,
                     pad_id: int) -> dict[str, Any]:
    """Write ``out``: the tokenizer graph merged in front of the graph ``model`` (strings in, its output out); return
    the manifest's ``tokenizer_in_graph`` entry (file, input, operator domains, onnxruntime-extensions version)."""
    import onnx
    from onnx import compose

    graph = onnx.load(str(model))
    opset = {o.domain: o.version for o in graph.opset_import}.get("", 0)
    if opset < 20:  # StringConcat
        raise InputError(f"--tokenizer-in-graph needs an opset-20 graph; this one is opset {opset}", _HINT)
    tokenizer = tokenizer_graph(tokenizer_json, prefix, max_length, pad_id, opset)
    _prefix_names(tokenizer.graph, "tokenizer/")
    tokenizer.ir_version = graph.ir_version
    merged = compose.merge_models(tokenizer, graph, io_map=[(f"tokenizer/{n}", n) for n in ("input_ids", "attention_mask")],
                                  doc_string="mlcompress: tokenizer (onnxruntime-extensions) + model")
    onnx.save(merged, str(out))
    return {"model": out.name, "input": TEXT_INPUT,
            "tokenizer": "BertTokenizer" if _kind(tokenizer_json) == "WordPiece" else "SentencepieceTokenizer",
            "domains": sorted({o.domain or "ai.onnx" for o in merged.opset_import}),
            "onnxruntime_extensions": _extensions_version()}


def _prefix_names(graph: Any, prefix: str) -> None:
    """Put ``prefix`` before every value name of ``graph`` and its subgraphs (the Loop body's outer-scope references
    too), except the ``text`` input, so that none collides with the model graph's names when the two are merged."""
    from onnx import AttributeProto

    rename = lambda name: name if name in ("", TEXT_INPUT) else prefix + name  # noqa: E731
    for value in (*graph.input, *graph.output, *graph.value_info):
        value.name = rename(value.name)
    for init in graph.initializer:
        init.name = rename(init.name)
    for node in graph.node:
        node.input[:] = [rename(x) for x in node.input]
        node.output[:] = [rename(x) for x in node.output]
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                _prefix_names(attr.g, prefix)


def _extensions_version() -> str:
    """The installed onnxruntime-extensions' version, or a clear error naming the extra that installs it."""
    try:
        import onnxruntime_extensions
    except ImportError as exc:
        raise InputError("--tokenizer-in-graph needs onnxruntime-extensions, which is not installed",
                         "pip install 'mlcompress[edge]' (or onnxruntime-extensions)") from exc
    return str(onnxruntime_extensions.__version__)


def session(model: Path | bytes, threads: int | None = None, config: dict[str, str] | None = None) -> Any:
    """An onnxruntime CPU session with onnxruntime-extensions' operators registered, for a tokenizer-in-graph model;
    ``config``: the session config entries the bundle's quantisation asks for (as the runtime applies them)."""
    import onnxruntime as ort

    from .runtime import session_options

    _extensions_version()  # an export-time error (InputError) naming the extra that installs it
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                session_options(threads, config, extensions=True), providers=["CPUExecutionProvider"])


MAX_ABS_DIFF = 1e-5  # the in-graph model's outputs against the two-file path's, on the same batches


def token_id_mismatches(ids_only: Any, tokenizer: Any, prefix: str, texts: list[str], batch_size: int = 512) -> list[str]:
    """The texts to which the tokenizer graph session ``ids_only`` gives other ids than ``tokenizer`` (tokenizer.json
    with the bundle's truncation) after ``prefix``; padding is not compared."""
    import numpy as np

    from .runtime import tokenize

    mismatched = []
    for i in range(0, len(texts), batch_size):
        batch = texts[i:i + batch_size]
        want = tokenize(tokenizer, batch, prefix)
        ids, mask = ids_only.run(None, {TEXT_INPUT: np.array(batch, dtype=object)})
        mismatched += [text for text, row, m, ref, ref_m in zip(batch, ids, mask, want["input_ids"], want["attention_mask"])
                       if not np.array_equal(row[m == 1], ref[ref_m == 1])]
    return mismatched


def text_model_parity(text_model: Path, reference: Any, tokenizer: Any, tokenizer_json: dict[str, Any], prefix: str,
                      max_length: int, pad_id: int, texts: list[str], batch_size: int = 16,
                      session_config: dict[str, str] | None = None) -> dict[str, Any]:
    """Compare the in-graph model with the two-file path (tokenizer.json + the session ``reference`` of the model) on
    ``texts``: how many texts get other token ids, and the largest output difference on the same batches (dynamic
    quantisation depends on the batch). ``session_config``: the quantisation's, applied to both as the runtime does."""
    import numpy as np

    from .runtime import tokenize

    ids_only = session(tokenizer_graph(tokenizer_json, prefix, max_length, pad_id, 21).SerializeToString())
    mismatched = token_id_mismatches(ids_only, tokenizer, prefix, texts)
    full = session(text_model, config=session_config)
    output = reference.get_outputs()[0].name
    worst = 0.0
    for i in range(0, len(texts), batch_size):
        batch = texts[i:i + batch_size]
        got = full.run([output], {TEXT_INPUT: np.array(batch, dtype=object)})[0]
        want = reference.run([output], tokenize(tokenizer, batch, prefix))[0]
        diff = float(np.abs(got - want).max()) if got.shape == want.shape and got.size else 0.0
        worst = max(worst, diff if got.shape == want.shape else float("inf"))
    return {"texts": len(texts), "token_id_mismatches": len(mismatched), "mismatched": mismatched[:5],
            "max_abs_diff": worst, "max_abs_diff_threshold": MAX_ABS_DIFF,
            "passed": not mismatched and worst <= MAX_ABS_DIFF}


def _kind(tokenizer_json: dict[str, Any]) -> str:
    """The tokenizer's model type (Unigram, WordPiece, BPE...)."""
    return str((tokenizer_json.get("model") or {}).get("type"))


def bert_tokenizer_attributes(tokenizer_json: dict[str, Any]) -> dict[str, Any]:
    """onnxruntime-extensions' BertTokenizer attributes for a WordPiece tokenizer.json (vocabulary in id order, the
    BertNormalizer's switches, the special tokens); refuse pipelines it does not reproduce."""
    model, norm = tokenizer_json.get("model") or {}, tokenizer_json.get("normalizer") or {}
    pre = (tokenizer_json.get("pre_tokenizer") or {}).get("type")
    if norm.get("type") != "BertNormalizer" or pre != "BertPreTokenizer" or model.get("continuing_subword_prefix", "##") != "##":
        raise InputError(f"--tokenizer-in-graph: a WordPiece tokenizer with {norm.get('type')} and {pre}; the in-graph "
                         "BertTokenizer reproduces BertNormalizer + BertPreTokenizer with '##' continuations", _HINT)
    vocab = model.get("vocab") or {}
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in by_id] != list(range(len(by_id))) or any("\n" in tok for tok, _ in by_id):
        raise InputError("--tokenizer-in-graph: the WordPiece vocabulary's ids are not 0..n-1", _HINT)
    missing = [t for t in ("[CLS]", "[SEP]", "[PAD]", "[MASK]", model.get("unk_token", "[UNK]")) if t not in vocab]
    if missing:  # BertTokenizer looks these up by name
        raise InputError(f"--tokenizer-in-graph: the WordPiece vocabulary lacks {', '.join(missing)}", _HINT)
    lower = bool(norm.get("lowercase", True))
    strip = norm.get("strip_accents")
    return {"vocab_file": "\n".join(tok for tok, _ in by_id), "do_lower_case": int(lower),
            "strip_accents": int(lower if strip is None else strip),
            "tokenize_chinese_chars": int(bool(norm.get("handle_chinese_chars", True))),
            "unk_token": model.get("unk_token", "[UNK]"),
            "suffix_indicator": "##", "max_input_chars_per_word": int(model.get("max_input_chars_per_word", 100))}


def _wordpiece_nodes(n: Any, tokenizer_json: dict[str, Any]) -> list[Any]:
    """A Loop over the batch (BertTokenizer takes one text) that gathers each text's ids, [CLS]/[SEP] dropped (the dense
    nodes put them back after truncation), into flat ``tokens32`` and row ``splits``, as SentencePiece gives them."""
    from onnx import TensorProto, helper

    attrs = bert_tokenizer_attributes(tokenizer_json)
    info = helper.make_tensor_value_info
    body = helper.make_graph([
        n("Unsqueeze", ["i", "zero_1d"], ["i_1d"]),
        n("Add", ["i_1d", "one_1d"], ["next_1d"]),
        n("Slice", ["prefixed", "i_1d", "next_1d"], ["one_text"]),
        n("BertTokenizer", ["one_text"], ["ids", "type_ids", "mask"], domain=CONTRIB, **attrs),
        n("Slice", ["ids", "one_1d", "minus_one_1d"], ["content"]),
        n("Concat", ["tokens_in", "content"], ["tokens_out"], axis=0),
        n("Shape", ["content"], ["count"]),
        n("Concat", ["lengths_in", "count"], ["lengths_out"], axis=0),
        n("Identity", ["cond_in"], ["cond_out"]),
    ], "one_text", [info("i", TensorProto.INT64, []), info("cond_in", TensorProto.BOOL, []),
                    info("tokens_in", TensorProto.INT64, [None]), info("lengths_in", TensorProto.INT64, [None])],
        [info("cond_out", TensorProto.BOOL, []), info("tokens_out", TensorProto.INT64, [None]),
         info("lengths_out", TensorProto.INT64, [None])])
    return [
        n("Size", ["prefixed"], ["texts"]),
        n("Loop", ["texts", "", "nothing", "nothing"], ["tokens32", "row_lengths"], body=body),
        n("CumSum", ["row_lengths", "zero"], ["ends_all"]),
        n("Concat", ["zero_1d", "ends_all"], ["splits"], axis=0),
    ]
