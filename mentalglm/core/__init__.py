"""The contract: hook specifications, the plugin manager, tasks and task files, the answer format and
its parsing, prompt styles, the backend contract, predictions, errors and small file helpers.

It imports nothing of mentalglm outside ``core/`` and nothing heavy (numpy, torch, transformers,
llama_cpp): backends and converters import those, lazily.
"""
