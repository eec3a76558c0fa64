"""``mentalglm serve``: the analysis as an HTTP service (the ``[serve]`` extra: FastAPI and uvicorn)."""
