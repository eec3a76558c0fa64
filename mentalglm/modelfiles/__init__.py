"""Model-file helpers that backends and converters both need: safetensors headers, model folders, tokens.

Nothing here loads a model or imports torch; backends never import ``converters``, they use this.
"""
