"""mlcompress.distill"""
