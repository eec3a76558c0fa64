"""Model converters (ChatGLM import, LoRA merge, GGUF export); see the converter issue."""
