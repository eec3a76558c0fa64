"""``mentalglm train``: argparse glue between the command line and :func:`mentalglm.training.train`.

``mentalglm/cli.py`` wires it in with::

    from mentalglm.training.cli import add_train_parser   # at the top of cli.py
    add_train_parser(sub)                                   # in build_parser(), next to the others

It also runs on its own as ``python -m mentalglm.training`` (or ``-m mentalglm.training.cli``),
which is what ``torchrun --nproc_per_node N -m mentalglm.training …`` needs.

Every option defaults to "not given", so a ``--config`` file's values survive and the
command line overrides them; the defaults themselves live in
:class:`~mentalglm.training.config.TrainConfig`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Sequence

from mentalglm.core.errors import MentalGLMError

#: Command-line option → TrainConfig field, for the options that are plain settings.
_OPTIONS = {
    "--model": "model", "--output": "output", "--prompt": "prompt", "--system": "system",
    "--end-token": "end_token", "--task": "task", "--eval-data": "eval_data",
    "--eval-max-new-tokens": "eval_max_new_tokens", "--eval-batch-size": "eval_batch_size",
    "--lora-r": "lora_r", "--lora-alpha": "lora_alpha", "--lora-dropout": "lora_dropout",
    "--target-modules": "target_modules", "--learning-rate": "learning_rate", "--lr-scheduler": "lr_scheduler",
    "--warmup-ratio": "warmup_ratio", "--weight-decay": "weight_decay", "--max-grad-norm": "max_grad_norm",
    "--epochs": "epochs", "--max-steps": "max_steps", "--batch-size": "batch_size",
    "--gradient-accumulation": "gradient_accumulation", "--max-length": "max_length", "--seed": "seed",
    "--precision": "precision", "--gradient-checkpointing": "gradient_checkpointing",
    "--save-every": "save_every", "--keep-checkpoints": "keep_checkpoints", "--log-every": "log_every",
    "--device": "device", "--trust-remote-code": "trust_remote_code", "--quiet": "quiet",
}


def _add_arguments(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("model and data")
    data.add_argument("--model", metavar="BASE", help="base model folder (transformers layout, e.g. glm-4-9b-chat-hf)")
    data.add_argument("--data", nargs="+", metavar="FILE",
                      help="C-IMHI record files (JSON array or JSONL) or sample:NAME, trained as one stage")
    data.add_argument("--stage", action="append", metavar="FILE[,FILE...]",
                      help="one training stage's files, repeatable; stages run in order and continue the same "
                           "adapter (the paper: --stage imhi-en.jsonl --stage c-imhi.jsonl)")
    data.add_argument("--config", metavar="FILE", help="YAML/JSON settings with an optional stages: list "
                                                       "(each stage may set epochs, max_steps, learning_rate); "
                                                       "command-line options override it")
    data.add_argument("-o", "--output", metavar="DIR", help="run folder: adapter/, train_config.json, loss.json, "
                                                            "loss.png, metrics.json, checkpoints/; rerun to resume")
    data.add_argument("--prompt", metavar="STYLE", help="prompt style (default glm4-chat; plain for base models)")
    data.add_argument("--system", metavar="TEXT", help="system message for chat prompt styles")
    data.add_argument("--end-token", metavar="TOKEN",
                      help="token appended to every response and learnt: auto (default: the tokenizer's eos when "
                           "the prompt style stops on it — <|endoftext|> for glm4-chat — else the first "
                           "single-token stop string, else eos), none, or a token's text")
    data.add_argument("--task", metavar="T", help="check that every output states a valid answer of task T "
                                                  "(needed by --eval-data)")
    data.add_argument("--max-length", type=int, metavar="N",
                      help="longest sequence in tokens (default 2048); longer responses are cut and counted, a "
                           "prompt that alone does not fit is an error")

    lora = p.add_argument_group("LoRA")
    lora.add_argument("--lora-r", type=int, metavar="R", help="rank (default 8)")
    lora.add_argument("--lora-alpha", type=float, metavar="A", help="alpha; the update is scaled by alpha/r (default 16)")
    lora.add_argument("--lora-dropout", type=float, metavar="P", help="dropout on the LoRA input (default 0.05)")
    lora.add_argument("--target-modules", metavar="A,B,...",
                      help="linear layers to adapt (default q_proj,k_proj,v_proj,o_proj,gate_up_proj,down_proj)")

    optim = p.add_argument_group("optimisation")
    optim.add_argument("--learning-rate", "--lr", dest="learning_rate", type=float, metavar="LR",
                       help="peak AdamW learning rate (default 2e-4)")
    optim.add_argument("--lr-scheduler", choices=["linear", "cosine", "constant"],
                       help="decay after warm-up (default linear)")
    optim.add_argument("--warmup-ratio", type=float, metavar="F", help="fraction of each stage's steps spent warming "
                                                                       "up (default 0.03)")
    optim.add_argument("--weight-decay", type=float, metavar="W", help="AdamW weight decay (default 0)")
    optim.add_argument("--max-grad-norm", type=float, metavar="N", help="clip the gradient norm (default 1; 0: off)")
    optim.add_argument("--epochs", type=int, metavar="N", help="epochs per stage (default 3)")
    optim.add_argument("--max-steps", type=int, metavar="N", help="optimizer steps per stage; wins over --epochs")
    optim.add_argument("--batch-size", type=int, metavar="N", help="sequences per forward pass, per process (default 4)")
    optim.add_argument("--gradient-accumulation", type=int, metavar="N",
                       help="forward passes per optimizer step (default 1)")
    optim.add_argument("--seed", type=int, help="seed of the LoRA init, data order and dropout (default 42)")
    optim.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                       help="auto (default: bf16 on a GPU that has it, else fp32); bf16/fp16 need a CUDA GPU")
    optim.add_argument("--gradient-checkpointing", action="store_const", const=True,
                       help="recompute activations in the backward pass (less memory, ~30%% slower)")
    optim.add_argument("--device", metavar="DEV", help="auto (default), cpu, cuda or cuda:N")
    optim.add_argument("--trust-remote-code", action="store_const", const=True,
                       help="let transformers run the model folder's own code (never needed for GLM-4 in "
                            "transformers layout)")

    run = p.add_argument_group("checkpoints, validation, output")
    run.add_argument("--save-every", type=int, metavar="N",
                     help="checkpoint every N optimizer steps (default 200; checkpoints are also written at "
                          "every epoch end)")
    run.add_argument("--keep-checkpoints", type=int, metavar="N", help="checkpoints kept (default 2)")
    run.add_argument("--eval-data", metavar="FILE", help="gold-labelled posts or records scored with --task's metrics "
                                                         "after every epoch (metrics.json)")
    run.add_argument("--eval-max-new-tokens", type=int, metavar="N", help="generation budget per eval post (default 256)")
    run.add_argument("--eval-batch-size", type=int, metavar="N", help="eval posts generated together (default 8)")
    run.add_argument("--log-every", type=int, metavar="N", help="progress line every N steps (default 10)")
    run.add_argument("--quiet", action="store_const", const=True, help="no progress lines on stderr")
    run.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``train`` command to the ``mentalglm`` sub-command parsers.

    Args:
        subparsers: what ``ArgumentParser.add_subparsers()`` returned.

    Returns:
        The ``train`` parser (its ``func`` default is :func:`cmd_train`).
    """
    p = subparsers.add_parser("train", help="LoRA fine-tuning on C-IMHI records (one or more stages; resumable)",
                              description="LoRA supervised fine-tuning of a GLM model on C-IMHI records, loss on "
                                          "the response tokens only. Rerun the same command to resume.")
    _add_arguments(p)
    p.set_defaults(func=cmd_train)
    return p


def config_from_args(args: argparse.Namespace):
    """The :class:`~mentalglm.training.config.TrainConfig` for parsed ``train`` arguments.

    Precedence: defaults < ``--config`` file < command-line options. ``--data`` or ``--stage``
    replace the config file's ``stages`` entirely.

    Raises:
        MentalGLMError: an unreadable config file, ``--data`` together with ``--stage``, or an
            invalid setting (named on one line).
    """
    from mentalglm.training.config import build_config, load_config_file

    settings = load_config_file(args.config) if getattr(args, "config", None) else {}
    origins: dict[str, str] = {}
    for option, key in _OPTIONS.items():
        value = getattr(args, key, None)
        if value is not None:
            settings[key], origins[key] = value, option
    if args.data and args.stage:
        raise MentalGLMError("give the data either with --data (one stage) or with --stage (one per stage), not both")
    if args.data:
        settings["stages"], origins["stages"] = [{"data": list(args.data)}], "--data"
    elif args.stage:
        settings["stages"], origins["stages"] = [{"data": spec} for spec in args.stage], "--stage"
    for key, option in (("model", "--model"), ("output", "--output")):
        if not settings.get(key):
            raise MentalGLMError(f"{option} is required (on the command line or in --config)")
    return build_config(settings, source=args.config or "command line", origins=origins)


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``mentalglm train`` with parsed arguments.

    Returns:
        0 when the run finished (now or earlier).

    Raises:
        MentalGLMError: any mistake in input; the caller prints it on one line and exits 1.
    """
    from mentalglm.training.loop import train

    result = train(config_from_args(args))
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict(), ensure_ascii=False, indent=2) + "\n")
    elif result.already_finished:
        print(f"already finished: {result.steps} steps; adapter in {result.adapter}")
    else:
        loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "-"
        print(f"trained {result.steps} steps, final loss {loss}; adapter in {result.adapter}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mentalglm.training``: the ``train`` command on its own; returns the exit code."""
    parser = argparse.ArgumentParser(prog="mentalglm train",
                                     description="LoRA fine-tuning of a GLM model on C-IMHI records.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
                        format="mentalglm: %(message)s", stream=sys.stderr)
    try:
        return cmd_train(args)
    except MentalGLMError as exc:
        # Under DDP every rank hits the same (deterministic) input error; one line is enough.
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"mentalglm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mentalglm: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
