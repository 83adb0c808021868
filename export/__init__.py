"""mlcompress.export"""
