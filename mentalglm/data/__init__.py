"""Posts and records in, from every file shape the field distributes: readers (JSONL, JSON arrays,
CSV/TSV, Parquet, Hugging Face folders, chat and ShareGPT conversations), encodings, the mapping of
fields and labels, and ``data inspect`` / ``data convert``. Built on :mod:`mentalglm.core` only.
"""
