"""Trim a SentencePiece ``.model`` file to the kept pieces, so slow tokenizers and spm users agree."""

from __future__ import annotations

from pathlib import Path

from mlcompress.errors import ModelSourceError

SPM_FILES = ("sentencepiece.bpe.model", "spiece.model", "tokenizer.model", "sentencepiece.model")


def trim_spm_model(src: Path, dst: Path, kept_pieces: set[str], dropped: set[str] = frozenset()) -> int:
    """Write ``src`` without the normal pieces not in ``kept_pieces``; returns the new piece count.

    Control, unknown and user-defined pieces are kept, SentencePiece assigns them meaning, unless ``dropped`` names
    them (the unused placeholder specials a decoder's trim leaves out, so that the .model matches tokenizer.json).
    """
    from sentencepiece import sentencepiece_model_pb2 as spm_pb2

    proto = spm_pb2.ModelProto()
    try:
        proto.ParseFromString(src.read_bytes())
    except Exception as exc:
        raise ModelSourceError(f"{src}: not a readable SentencePiece model ({exc})", "re-save the tokenizer") from exc
    always = {spm_pb2.ModelProto.SentencePiece.CONTROL, spm_pb2.ModelProto.SentencePiece.UNKNOWN,
              spm_pb2.ModelProto.SentencePiece.USER_DEFINED}
    kept = [p for p in proto.pieces if (p.type in always and p.piece not in dropped) or p.piece in kept_pieces]
    del proto.pieces[:]
    proto.pieces.extend(kept)
    dst.write_bytes(proto.SerializeToString())
    return len(kept)
