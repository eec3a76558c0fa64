"""``mentalglm export | sizes | inspect | convert | merge``: GGUF export and sizes, ChatGLM import, LoRA merge."""

from __future__ import annotations

from mentalglm.cli.common import mib, print_json, table


def cmd_export(args) -> int:
    """Convert a GLM model (optionally with a LoRA adapter) to GGUF."""
    from mentalglm.converters.gguf_export import export_gguf

    result = export_gguf(args.model, args.output, outtype=args.outtype, adapter_dir=args.adapter, name=args.name)
    needed = result.memory_needed(args.ctx)
    summary = {"output": str(result.path), "outtype": result.outtype, "architecture": result.arch,
               "tensors": result.n_tensors, "file_bytes": result.file_bytes, "seconds": round(result.seconds, 3),
               "n_ctx": args.ctx, "kv_cache_bytes": result.spec.kv_cache_bytes(args.ctx), "memory_bytes": needed}
    if args.json:
        print_json(summary)
    else:
        print(f"wrote {result.path} ({result.arch}, {result.outtype}, {mib(result.file_bytes)}, "
              f"{result.n_tensors} tensors) in {result.seconds:.1f} s")
        print(f"memory at n_ctx={args.ctx}: about {mib(needed)} (weights {mib(result.file_bytes)} + f16 KV cache "
              f"{mib(result.spec.kv_cache_bytes(args.ctx))}; compute buffers come on top)")
    return 0


def cmd_sizes(args) -> int:
    """File size and memory of a model per GGUF out type, from its config alone."""
    from mentalglm.converters.gguf_export import OUTTYPES
    from mentalglm.converters.glm_spec import read_spec
    from mentalglm.converters.sizing import estimate, parallel_kv_cache_bytes, parameter_count

    spec = read_spec(args.model)
    contexts = args.ctx or [4096, 32768]
    rows = []
    for outtype in OUTTYPES:
        size = estimate(spec, outtype)
        rows.append({"outtype": outtype, "tensor_bytes": size.tensor_bytes, "bytes_by_type": size.bytes_by_type,
                     "memory_bytes": {str(n): size.memory_needed(spec, n) for n in contexts}})
    document = {"architecture": spec.architecture, "arch": spec.arch, "parameters": parameter_count(spec),
                "kv_cache_bytes": {str(n): spec.kv_cache_bytes(n) for n in contexts}, "outtypes": rows,
                "parallel": args.parallel,
                "parallel_kv_cache_bytes": {str(n): parallel_kv_cache_bytes(spec, n, args.parallel) for n in contexts}}
    if args.json:
        print_json(document)
        return 0
    print(f"{spec.architecture} → {spec.arch}: {document['parameters']:,} parameters, f16 KV cache "
          + ", ".join(f"{mib(spec.kv_cache_bytes(n))} at {n}" for n in contexts))
    print(f"llamacpp -O parallel={args.parallel} (each sequence its own window): f16 KV cache "
          + ", ".join(f"{mib(parallel_kv_cache_bytes(spec, n, args.parallel))} at {n}" for n in contexts))
    print(table([(r["outtype"], mib(r["tensor_bytes"]), *(mib(r["memory_bytes"][str(n)]) for n in contexts),
                   ", ".join(sorted(r["bytes_by_type"]))) for r in rows],
                 ["outtype", "weights", *(f"memory @ {n}" for n in contexts), "tensor types"]))
    return 0


def cmd_inspect(args) -> int:
    """Describe a GGUF file."""
    from mentalglm.converters.gguf_inspect import inspect_gguf, render_inspection

    info = inspect_gguf(args.file)
    if args.json:
        print_json(info)
    else:
        print(render_inspection(info))
    return 0


def cmd_convert(args) -> int:
    """Import an original ChatGLM-layout checkpoint as a transformers-native GLM directory."""
    from mentalglm.converters.chatglm import import_chatglm

    out = import_chatglm(args.model, args.output, dtype=args.dtype)
    if args.json:
        print_json({"output": str(out)})
    else:
        print(f"wrote transformers-native GlmForCausalLM to {out} (no remote code needed)")
    return 0


def cmd_merge(args) -> int:
    """Merge a LoRA adapter into its base model directory."""
    from mentalglm.converters.lora import merge_lora

    out = merge_lora(args.model, args.adapter, args.output)
    if args.json:
        print_json({"output": str(out)})
    else:
        print(f"wrote merged model to {out}")
    return 0


def add_parser(sub) -> None:
    """Add ``export``, ``sizes``, ``inspect``, ``convert`` and ``merge``."""
    p = sub.add_parser("export", help="convert a GLM model (and LoRA adapter) to a GGUF file for llama.cpp")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="GlmForCausalLM, Glm4ForCausalLM or ChatGLM-layout directory")
    p.add_argument("--adapter", metavar="DIR", help="peft LoRA adapter to merge while converting")
    p.add_argument("--outtype", default="f16", help="f32, f16, bf16, q8_0, q4_k_m, q5_k_m or q6_k (default f16)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.gguf", help="the GGUF file to write")
    p.add_argument("--name", help="general.name written into the file (default: the model folder's name)")
    p.add_argument("--ctx", type=int, default=4096, help="context length for the memory estimate (default 4096)")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("sizes", help="file size and memory per GGUF out type, computed from a model's config")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="model directory or its config.json (weights not needed)")
    p.add_argument("--ctx", type=int, action="append",
                   help="context length(s) for the memory column (default 4096, 32768)")
    p.add_argument("--parallel", type=int, default=8, metavar="N",
                   help="parallel sequences for the KV-cache line (llamacpp -O parallel=N; default 8, the CPU default)")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=cmd_sizes)

    p = sub.add_parser("inspect", help="architecture, size, tensor types, tokenizer and provenance of a GGUF file")
    p.add_argument("file", metavar="FILE.gguf")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("convert",
                       help="import an original THUDM ChatGLM-layout checkpoint as a transformers-native GLM")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="ChatGLM-layout directory (e.g. the released MentalGLM)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="where the GlmForCausalLM directory goes")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="weights dtype (default: as stored)")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("merge", help="merge a peft LoRA adapter into its base model (safetensors directory)")
    p.add_argument("--model", required=True, metavar="DIR", help="the base model directory")
    p.add_argument("--adapter", required=True, metavar="DIR", help="the peft LoRA adapter directory")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="where the merged model goes")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.set_defaults(func=cmd_merge)
