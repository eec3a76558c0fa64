"""mentalglm: explainable mental-health analysis of Chinese social-media posts with MentalGLM.

The public Python API::

    from mentalglm import Analyzer
    with Analyzer(task="suicide-risk", backend="llamacpp", model="mentalglm-q4_k_m.gguf") as analyzer:
        prediction = analyzer.analyze("……")
        print(prediction.labels, prediction.explanation)

Plugins implement the hooks in :mod:`mentalglm.core.hookspecs` with :data:`hookimpl`.
"""

from mentalglm.analysis.analyzer import Analyzer
from mentalglm.core.backend import Backend, BackendOptions, Completion, GenerationRequest
from mentalglm.core.errors import DataError, MentalGLMError, OptionsError, PluginError, UnknownNameError
from mentalglm.core.hookspecs import hookimpl
from mentalglm.core.plugin_manager import PluginManager, get_plugin_manager
from mentalglm.core.prediction import Post, Prediction
from mentalglm.core.prompt import PromptStyle
from mentalglm.core.task import (
    ClassificationTask,
    ExtractionTask,
    Field,
    HierarchicalTask,
    Label,
    MultiLabelTask,
    ParsedResponse,
    SingleLabelTask,
    Task,
)
from mentalglm.core.taskfile import load_task_file

__version__ = "0.1.0"

__all__ = [
    "Analyzer", "Backend", "BackendOptions", "ClassificationTask", "Completion", "DataError", "ExtractionTask",
    "Field", "GenerationRequest", "HierarchicalTask", "Label", "MentalGLMError", "MultiLabelTask", "OptionsError",
    "ParsedResponse", "PluginError", "PluginManager", "Post", "Prediction", "PromptStyle", "SingleLabelTask",
    "Task", "UnknownNameError", "get_plugin_manager", "hookimpl", "load_task_file",
]
