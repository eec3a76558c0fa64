"""What the command modules share: output (JSON, tables), backend options, the flag groups.

Flag groups: the model and analyzer flags of ``analyze`` / ``evaluate``, the calibration policy
flags, the bootstrap flags, and the data mapping flags every command that reads data shares
(``--text-field`` … ``--encoding``; :func:`data_mapping` turns them into the
:class:`~mentalglm.data.mapping.DataMapping` the data readers take, so they mean the same
everywhere). Nothing heavy is imported here: ``mentalglm --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from mentalglm.core.errors import MentalGLMError, OptionsError
from mentalglm.data.mapping import FORMATS, DataMapping, parse_columns, parse_label_map


# -- output ---------------------------------------------------------------------------------------
def print_json(value) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(header))]

    def line(row):
        return "  ".join(c + " " * (w - _width(c)) for c, w in zip(row, widths)).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def _width(text: str) -> int:
    """Display width: CJK characters take two terminal columns."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def parse_options(pairs: Sequence[str]) -> dict[str, str]:
    options = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise OptionsError(f"--option expects KEY=VALUE, got '{pair}'")
        options[key.strip()] = value
    return options


def plugins():
    from mentalglm.core.plugin_manager import get_plugin_manager

    return get_plugin_manager()


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"




# -- argparse types -------------------------------------------------------------------------------
def at_least(minimum: float, cast: Callable[[str], float] = int) -> Callable[[str], float]:
    """An argparse ``type``: ``cast(text)`` (``int``: a whole number; ``float``: fractions too), ≥ ``minimum``."""
    kind = "a whole number" if cast is int else "a number"

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {minimum:g} or more, got {text}")
        return value

    parse.__name__ = f"{cast.__name__} ≥ {minimum:g}"  # what argparse names in its own errors
    return parse


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="task name (see `mentalglm tasks`) or a task file (.yaml/.toml)")
    parser.add_argument("--backend", default="llamacpp",
                        help="backend name (see `mentalglm backends`); default llamacpp")
    parser.add_argument("--model", help="what the backend loads: GGUF file, model directory, saved outputs…")
    parser.add_argument("--prompt", default="glm4-chat",
                        help="prompt style: glm4-chat (default), plain (base models), auto (the model's own chat "
                             "template), server (the server applies its own; openai backend), chatml, qwen, llama-3, "
                             "gemma, or one a plugin adds")
    parser.add_argument("--system", help="system message for chat prompt styles")
    parser.add_argument("-O", "--option", action="append", metavar="KEY=VALUE",
                        help="backend option, repeatable (see `mentalglm backends`)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="posts per backend call (default: the backend's choice, 8; llamacpp: 4 per parallel slot)")
    parser.add_argument("--mode", choices=["generate", "score"], default="generate",
                        help="generate the answer, or (single-label tasks) pick the label by log-likelihood")
    parser.add_argument("--no-explain", action="store_true", help="score mode: skip generating the explanation")
    parser.add_argument("--confidence", action="store_true",
                        help="generate mode, single-label tasks: also score every label after the answer "
                             "(scores, and confidence: the probability of the generated label)")
    redact = parser.add_mutually_exclusive_group()
    redact.add_argument("--redact", dest="redact", action="store_true", default=None,
                        help="redact phone numbers, e-mails, URLs, @mentions, ID numbers before the backend sees posts "
                             "(default: on for the openai backend only)")
    redact.add_argument("--no-redact", dest="redact", action="store_false", help="never redact")
    parser.add_argument("--strict-format", action="store_true",
                        help="only answers with a label line (标签：…) count; others are invalid")
    parser.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    parser.add_argument("--json", action="store_true", help="JSON on stdout")
    add_policy_arguments(parser, applying=True)


def add_policy_arguments(parser: argparse.ArgumentParser, *, applying: bool) -> None:
    if applying:
        parser.add_argument("--calibration", metavar="FILE",
                            help="score mode: calibration.json of mentalglm calibrate; predictions carry probabilities")
    parser.add_argument("--target-recall", type=target_recall_type, metavar="LABEL=R",
                        help=("the threshold for LABEL reaching recall R on the dev run (chosen at calibrate time)"
                              if applying else "choose the threshold on LABEL's probability that reaches recall R"))
    parser.add_argument("--review-band", type=band_type, metavar="LO:HI",
                        help="posts whose risk-label probability is in [LO, HI] get needs_review: true")


def target_recall_type(text: str) -> tuple[str, float]:
    """An argparse type: ``LABEL=R`` with 0 < R ≤ 1."""
    label, sep, value = text.rpartition("=")
    try:
        recall = float(value)
    except ValueError:
        recall = -1.0
    if not sep or not label.strip() or not 0 < recall <= 1:
        raise argparse.ArgumentTypeError(f"expected LABEL=R with 0 < R ≤ 1, got '{text}'")
    return label.strip(), recall


def band_type(text: str) -> tuple[float, float]:
    """An argparse type: ``LO:HI`` with 0 ≤ LO ≤ HI ≤ 1."""
    low, sep, high = text.partition(":")
    try:
        band = (float(low), float(high))
    except ValueError:
        band = (-1.0, -1.0)
    if not sep or not 0 <= band[0] <= band[1] <= 1:
        raise argparse.ArgumentTypeError(f"expected LO:HI with 0 ≤ LO ≤ HI ≤ 1, got '{text}'")
    return band


def add_bootstrap_arguments(parser: argparse.ArgumentParser) -> None:
    from mentalglm.evaluation.statistics import DEFAULT_RESAMPLES, DEFAULT_SEED  # light: no numpy at import

    parser.add_argument("--bootstrap", type=at_least(0), default=DEFAULT_RESAMPLES, metavar="N",
                        help="percentile-bootstrap resamples over posts for the 95 %% intervals (default %(default)s; "
                             "0: off, rates keep their Wilson interval)")
    parser.add_argument("--seed", type=at_least(0), default=DEFAULT_SEED,
                        help="seed of the bootstrap resampling (default %(default)s)")


def analyzer_arguments(args, task) -> dict:
    """The Analyzer's keyword arguments from the command line (``--executor ray`` gives them to every worker)."""
    return dict(task=task, backend=args.backend, model=args.model, prompt=args.prompt,
                options=parse_options(args.option), system=args.system, batch_size=args.batch_size,
                mode=args.mode, explain=not args.no_explain, redact=args.redact,
                strict_format=args.strict_format, calibration=calibration_from_args(args), confidence=args.confidence)


def make_analyzer(args, task):
    from mentalglm.analysis.analyzer import Analyzer

    return Analyzer(**analyzer_arguments(args, task))


def calibration_from_args(args):
    """``--calibration FILE`` with ``--review-band`` applied; ``--target-recall`` must be the one it was fitted for.

    The threshold is chosen on the dev run at calibrate time, never on the posts being analysed,
    so a different target here is refused rather than silently ignored.
    """
    if not args.calibration:
        if args.target_recall or args.review_band:
            raise MentalGLMError("--target-recall and --review-band need --calibration FILE (mentalglm calibrate)")
        return None
    from mentalglm.analysis.calibration import Calibration, check_band

    calibration = Calibration.load(args.calibration)
    policy = calibration.policy
    if args.target_recall and args.target_recall != (policy.risk_label, policy.target_recall):
        fitted = (f"{policy.risk_label}={policy.target_recall:g}" if policy.target_recall is not None else "none")
        raise MentalGLMError(f"{args.calibration} chose its threshold for target recall {fitted}; run mentalglm "
                             f"calibrate --target-recall {args.target_recall[0]}={args.target_recall[1]:g} for another")
    if args.review_band:
        check_band(args.review_band)
        policy.review_band = args.review_band
    return calibration


# -- the data mapping flags -----------------------------------------------------------------------
#: argparse destination → DataMapping field, and the flag a user typed.
_FLAGS = {"data_format": ("format", "--format"), "encoding": ("encoding", "--encoding"),
          "text_field": ("text_field", "--text-field"), "label_field": ("label_field", "--label-field"),
          "id_field": ("id_field", "--id-field"), "label_map": ("label_map", "--label-map"),
          "columns": ("columns", "--columns")}


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the data mapping flags (``--text-field`` … ``--encoding``) to ``parser``, as one help group."""
    group = parser.add_argument_group("data mapping (what detection cannot know; a dataset card .yaml in place "
                                      "of the file holds the same keys)")
    group.add_argument("--text-field", metavar="F", help="the field or column holding the post (default: text, or a "
                       "common name such as comment, content, 内容 — data inspect says which)")
    group.add_argument("--label-field", metavar="F", help="the field or column holding the gold label (default: "
                       "label; or one-hot columns named by the task's labels)")
    group.add_argument("--id-field", metavar="F", help="the field or column holding the post id (default: id, else "
                       "the position in the file)")
    group.add_argument("--label-map", metavar="RAW=LABEL,...",
                       help="what raw label values mean, e.g. 0=低自杀风险,1=高自杀风险 (a value outside it is an "
                            "error)")
    group.add_argument("--columns", metavar="A,B,...",
                       help="names of a headerless file's columns, e.g. 高自杀风险,低自杀风险,text (one-hot flags)")
    group.add_argument("--encoding", help="text encoding (default: detected: BOM, UTF-8, else GB18030)")
    group.add_argument("--format", dest="data_format", choices=FORMATS,
                       help="read the file as this format whatever its extension")


def data_mapping(args: argparse.Namespace) -> DataMapping | None:
    """The :class:`DataMapping` the flags of :func:`add_data_arguments` describe (None when none is given).

    Raises:
        MentalGLMError: a malformed ``--label-map`` or ``--columns``.
    """
    values, origin = {}, {}
    for dest, (name, flag) in _FLAGS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if name == "label_map":
            value = parse_label_map(value)
        elif name == "columns":
            value = parse_columns(value)
        values[name], origin[name] = value, flag
    return DataMapping(**values, origin=origin) if values else None
