"""Backends: each module holds one backend and imports its heavy libraries lazily."""
