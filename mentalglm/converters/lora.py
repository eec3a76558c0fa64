"""LoRA adapters (peft format) merged into their base weights, a block of rows at a time.

``W' = W + s · B A`` with ``s = lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA), per-module ranks
and alphas from ``rank_pattern``/``alpha_pattern``, and ``modules_to_save`` tensors replacing
the base ones — what ``peft``'s ``merge_and_unload`` computes, without loading either model in
full. Adapter features that change the forward pass in other ways (DoRA, LoRA biases,
embedding LoRA) are refused rather than merged wrongly.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mentalglm.core.errors import MentalGLMError
from mentalglm.modelfiles.safetensors import SafetensorsCheckpoint, TensorEntry

_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>A|B)(?:\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class LoraTarget:
    """One merged module: its low-rank factors and scale."""

    module: str
    lora_a: TensorEntry
    lora_b: TensorEntry
    scale: float


def _pattern_value(patterns: dict, module: str, default):
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


class LoraAdapter:
    """A peft LoRA adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``).

    Args:
        adapter_dir: the directory.

    Raises:
        MentalGLMError: missing files, a non-LoRA adapter, or an unsupported LoRA feature.
    """

    def __init__(self, adapter_dir: str | Path):
        self.dir = Path(adapter_dir)
        config_path = self.dir / "adapter_config.json"
        try:
            self.config = json.loads(config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MentalGLMError(f"{config_path}: missing; is {self.dir} a peft adapter directory?") from None
        except (OSError, ValueError) as exc:
            raise MentalGLMError(f"{config_path}: unreadable ({exc})") from None
        if self.config.get("peft_type", "LORA") != "LORA":
            raise MentalGLMError(f"{config_path}: field 'peft_type': {self.config.get('peft_type')!r}; "
                                 "only LORA merges")
        for feature in ("use_dora", "lora_bias"):
            if self.config.get(feature):
                raise MentalGLMError(f"{config_path}: field '{feature}': not supported by the merge")
        if not list(self.dir.glob("*.safetensors")):
            raise MentalGLMError(f"{self.dir}: no adapter_model.safetensors (pickle adapters are not loaded)")
        self.weights = SafetensorsCheckpoint(self.dir)
        self.targets, self.replacements = self._collect()

    def _collect(self) -> tuple[dict[str, LoraTarget], dict[str, TensorEntry]]:
        parts: dict[str, dict[str, TensorEntry]] = {}
        replacements: dict[str, TensorEntry] = {}
        for name, entry in self.weights.entries.items():
            bare = name[len(_PREFIX):] if name.startswith(_PREFIX) else name
            match = _LORA_KEY.match(bare)
            if match:
                parts.setdefault(match["module"], {})[match["part"]] = entry
            elif "lora_" in bare:
                raise MentalGLMError(f"{self.dir}: adapter tensor '{name}' is an unsupported LoRA kind "
                                     "(embedding or bias LoRA)")
            else:  # modules_to_save: trained copies of whole base tensors
                replacements[re.sub(r"\.modules_to_save\.[^.]+\.", ".", bare)] = entry
        r = self.config.get("r", 8)
        alpha = self.config.get("lora_alpha", r)
        rank_pattern = self.config.get("rank_pattern") or {}
        alpha_pattern = self.config.get("alpha_pattern") or {}
        targets = {}
        for module, pair in parts.items():
            if set(pair) != {"A", "B"}:
                raise MentalGLMError(f"{self.dir}: module '{module}' has lora_{'A' if 'A' in pair else 'B'} "
                                     "but not its pair")
            rank = _pattern_value(rank_pattern, module, r)
            module_alpha = _pattern_value(alpha_pattern, module, alpha)
            scale = module_alpha / (math.sqrt(rank) if self.config.get("use_rslora") else rank)
            targets[f"{module}.weight"] = LoraTarget(module, pair["A"], pair["B"], scale)
        return targets, replacements

    def check_base(self, base: SafetensorsCheckpoint) -> None:
        """Raise MentalGLMError when the adapter does not fit ``base`` (missing module, wrong shape)."""
        for weight, target in self.targets.items():
            if weight not in base:
                raise MentalGLMError(f"adapter {self.dir} targets '{target.module}', which the base model "
                                     f"{base.dir} lacks; was it trained on another base model?")
            out_features, in_features = base.entry(weight).shape
            if self.config.get("fan_in_fan_out"):
                out_features, in_features = in_features, out_features
            if target.lora_b.shape[0] != out_features or target.lora_a.shape[-1] != in_features:
                raise MentalGLMError(
                    f"adapter {self.dir} module '{target.module}': LoRA shapes {target.lora_b.shape[0]}×"
                    f"{target.lora_a.shape[-1]} do not fit base weight {base.entry(weight).shape}; wrong base model?")
        for name, entry in self.replacements.items():
            if name not in base:
                raise MentalGLMError(f"adapter {self.dir} saves module tensor '{name}', which the base model lacks")
            if base.entry(name).shape != entry.shape:
                raise MentalGLMError(f"adapter {self.dir} tensor '{name}' has shape {entry.shape}, base has "
                                     f"{base.entry(name).shape}; wrong base model?")

    def merged_block(self, base: SafetensorsCheckpoint, name: str, rows: slice, block: np.ndarray) -> np.ndarray:
        """``block`` (rows of base tensor ``name``) with the adapter applied."""
        if name in self.replacements:
            return self.weights.read(self.replacements[name].name, rows)
        target = self.targets.get(name)
        if target is None:
            return block
        lora_a = self.weights.read(target.lora_a.name)
        lora_b = self.weights.read(target.lora_b.name)
        if self.config.get("fan_in_fan_out"):
            delta = (lora_b @ lora_a).T[rows]
        else:
            delta = lora_b[rows] @ lora_a
        return block + np.float32(target.scale) * delta


def _to_dtype(block: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":  # round to nearest even, as torch does
        bits = np.ascontiguousarray(block, dtype=np.float32).view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return block.astype({"F32": np.float32, "F16": np.float16, "F64": np.float64}.get(dtype, block.dtype))


def merge_lora(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Write base + adapter merged into a new model directory (same layout, dtypes and config).

    Tensors are streamed a block at a time into one safetensors file; config, tokenizer and
    generation files are copied. The result loads like the base model, without peft.

    Raises:
        MentalGLMError: unreadable inputs, or an adapter that does not fit the base model.
    """
    base = SafetensorsCheckpoint(base_dir)
    adapter = LoraAdapter(adapter_dir)
    adapter.check_base(base)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header, offset = {}, 0
    for name, entry in base.entries.items():
        header[name] = {"dtype": entry.dtype, "shape": list(entry.shape),
                        "data_offsets": [offset, offset + entry.nbytes]}
        offset += entry.nbytes
    header["__metadata__"] = {"format": "pt", "merged_adapter": str(adapter.dir.name)}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    partial = out / "model.safetensors.partial"
    with open(partial, "wb") as handle:
        handle.write(len(blob).to_bytes(8, "little") + blob)
        for name, entry in base.entries.items():
            if entry.dtype not in ("F32", "F16", "BF16", "F64"):
                handle.write(_read_raw(entry))
                continue
            for rows, block in base.row_blocks(name):
                handle.write(_to_dtype(adapter.merged_block(base, name, rows, block), entry.dtype).tobytes())
    for stale in list(out.glob("*.safetensors")) + list(out.glob("model.safetensors.index.json")):
        stale.unlink()
    partial.replace(out / "model.safetensors")
    for source in Path(base_dir).iterdir():
        if (source.is_file() and not source.name.endswith((".safetensors", ".bin"))
                and source.name != "model.safetensors.index.json"):
            shutil.copy2(source, out / source.name)
    return out


def _read_raw(entry: TensorEntry) -> bytes:
    with open(entry.path, "rb") as handle:
        handle.seek(entry.start)
        return handle.read(entry.nbytes)
