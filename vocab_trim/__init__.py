"""mlcompress.vocab_trim: token statistics over corpora, selection policies, tokenizer and model surgery."""

from mlcompress.corpus import Corpus
from .counting import TokenCounts, count_corpus, count_lines
from .policies import Coverage, MinCount, Quotas, Scripts, TopK, make_policy
from .trim import TrimResult, trim

__all__ = ["Corpus", "Coverage", "MinCount", "Quotas", "Scripts", "TokenCounts", "TopK", "TrimResult",
           "count_corpus", "count_lines", "make_policy", "trim"]
