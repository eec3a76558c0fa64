"""Built-in backends, registered as lazy ``module:Class`` targets so heavy libraries load only when chosen."""

from __future__ import annotations

from mentalglm.core.hookspecs import hookimpl


@hookimpl
def register_backends(register):
    """Register the backends shipped with mentalglm."""
    register("replay", "mentalglm.backends.replay:ReplayBackend")
    register("openai", "mentalglm.backends.openai_backend:OpenAIBackend")
    register("torch", "mentalglm.backends.torch_backend:TorchBackend")
    register("llamacpp", "mentalglm.backends.llamacpp_backend:LlamaCppBackend")
    register("baseline", "mentalglm.backends.baseline_backend:BaselineBackend")
