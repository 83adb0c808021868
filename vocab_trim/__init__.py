"""mlcompress.vocab_trim"""
