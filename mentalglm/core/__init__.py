"""The framework core: plugin contract, tasks, prompts, backend contract, data, metrics, analyzer.

Nothing here imports torch, transformers or llama_cpp; backends and converters do, lazily.
"""
