"""What produced a result: versions of the packages that can change it."""

from __future__ import annotations

import platform
from importlib import metadata

#: Distributions whose versions are recorded with results when installed.
RECORDED_PACKAGES = ("mentalglm", "pluggy", "pydantic", "scikit-learn", "numpy", "torch", "transformers",
                     "peft", "llama_cpp_python", "gguf")


def package_versions() -> dict[str, str]:
    """Versions of the installed packages that can change results, without importing them."""
    versions = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
