"""Built-in backends, registered as lazy ``module:Class`` targets so heavy libraries load only when chosen."""

from __future__ import annotations

from mentalglm.core.hookspecs import hookimpl


@hookimpl
def register_backends(register):
    """Register the backends shipped with mentalglm."""
    register("replay", "mentalglm.backends.replay:ReplayBackend")
    register("llamacpp", "mentalglm.backends.llamacpp_backend:LlamaCppBackend")
