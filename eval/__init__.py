"""mlcompress.eval"""
