"""What the scripts share: every flag that sets a pipeline's setting, declared once (`FLAGS`, keyed by the
setting's name), its default read from the settings dataclass or function the script calls, so a script's
defaults are the library's; and a user's mistake reported as one line, ``PROG: error: MESSAGE``, exit status 2.

A flag means the same everywhere: ``--data`` the data suite (``routing.data.suites``: the real data sets, or the
model organism's), ``--data-dir`` its source folder (``source_dir``: laid out like shared/data, or the organism
folder), ``--tfds-dir`` the cache folder of prepared data sets, ``--chat``/``--plain`` whether prompts and
passages go through the chat template (the scripts' default), ``--no-progress`` hides progress bars.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from routing.data.suites import SUITES
from routing.data.tokenize import TRUNCATIONS
from routing.eval.mgsm import ANSWER_FORMATS
from routing.eval.multiple_choice import OPTION_STYLES
from routing.eval.tasks import SHOT_SOURCES, TASKS
from routing.pipelines.models import DTYPES
from routing.pipelines.steer_eval import CONTROLS, MODES

USER_ERRORS = (ValueError, OSError)  # bad values and files (incl. CheckpointError, FileNotFoundError, offline)
NO_DEFAULT = inspect.Parameter.empty


@contextlib.contextmanager
def user_errors(parser: argparse.ArgumentParser) -> Iterator[None]:
    """Inside the block, a ValueError or OSError ends the program with ``PROG: error: MESSAGE`` on stderr and
    exit status 2 (as argparse reports a bad option), instead of a traceback."""
    try:
        yield
    except USER_ERRORS as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")


def _codes(text: str) -> tuple[str, ...]:
    """``"a, b,c"`` -> ``("a", "b", "c")``."""
    return tuple(code.strip() for code in text.split(",") if code.strip())


def _integers(text: str) -> tuple[int, ...]:
    """``"1,2"`` -> ``(1, 2)``; argparse reports anything else."""
    try:
        return tuple(int(value) for value in _codes(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _read_text(path: Path) -> str:
    return Path(path).read_text(encoding="utf-8")


@dataclasses.dataclass(frozen=True)
class Flag:
    """How one setting appears on the command line: its ``option``, help text and argparse options; ``load``
    turns the parsed value into the setting's (after parsing, so a missing file is a one-line error)."""

    option: str
    help: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    load: Callable[[Any], Any] | None = None


FLAGS: dict[str, Flag] = {
    "model": Flag("--model", "HF checkpoint folder, converted folder or hub id"),
    "data": Flag("--data", "the data: real (FLORES-200, BELEBELE, ... from --data-dir) or organism (the model "
                 "organism's, from --data-dir: its folder, default the --model folder)",
                 dict(choices=tuple(SUITES))),
    "source_dir": Flag("--data-dir", "folder laid out like shared/data", dict(type=Path)),
    "tfds_dir": Flag("--tfds-dir", "cache folder of prepared data sets (default: $MOE_TFDS_DIR, else tfds in the user "
                     "cache folder, ~/.cache/moe-routing/tfds)", dict(type=Path)),
    "out_dir": Flag("--out", "output folder", dict(type=Path)),
    "languages": Flag("--langs", "comma-separated languages, FLORES-200 or short codes (the organism's own codes "
                      "with --data organism)", dict(type=_codes)),
    "reference": Flag("--reference", "reference language (default: eng_Latn; the organism's base with --data "
                      "organism)"),
    "tokenizer": Flag("--tokenizer", "tokenizer.json file or folder (default: the model folder)"),
    "chat_template": Flag("--chat-template", "Jinja chat template file replacing the tokenizer's",
                          dict(type=Path), load=_read_text),
    "max_passages": Flag("--max-passages", "first N FLORES passages per language (default: all)", dict(type=int)),
    "batch_size": Flag("--batch-size", "rows per batch", dict(type=int)),
    "max_length": Flag("--max-length", "longest sequence in tokens", dict(type=int)),
    "truncation": Flag("--truncate", "sequences longer than --max-length: error, or keep their start or end",
                       dict(choices=TRUNCATIONS)),
    "seed": Flag("--seed", "seed", dict(type=int)),
    "dtype": Flag("--dtype", "parameter dtype", dict(choices=sorted(DTYPES))),
    "window": Flag("--window", "FIRST:LAST MoE layers, 0-indexed, inclusive"),
    "window_fraction": Flag("--window-fraction", "window selection rule: layers within this fraction of the mean "
                            "curve's range above its minimum, contiguous around it", dict(type=float)),
    "window_margin": Flag("--window-margin", "shrink the selected window by this many layers on each side",
                          dict(type=int)),
    "n_boot": Flag("--n-boot", "bootstrap resamples", dict(type=int)),
    "restart": Flag("--restart", "discard stored per-language results", dict(action="store_true")),
    "progress": Flag("--no-progress", "hide progress bars", dict(action="store_false")),
    # analyze_routing
    "num_pairs": Flag("--consistency-pairs", "token pairs sampled per passage for consistency", dict(type=int)),
    "heatmap_layers": Flag("--heatmap-layers", "comma-separated MoE layers for expert_usage.png (default: first, "
                           "window centre, last)", dict(type=_integers)),
    # correlate
    "routing_dir": Flag("--routing-dir", "where per-language routing results are stored and reused (default: "
                        "--out)", dict(type=Path)),
    # find_experts
    "task": Flag("--task", "the evaluation task", dict(choices=tuple(TASKS))),
    "num_samples": Flag("--num-samples", "task samples", dict(type=int)),
    # steer_eval: how to steer
    "experts": Flag("--experts", "expert file (experts.json of find_experts.py, or a JSON list)", dict(type=Path)),
    "mode": Flag("--mode", "soft, hard (forced on) or off (forced off)", dict(choices=MODES)),
    "lam": Flag("--lam", "soft steering strength; soft mode only", dict(type=float)),
    "eps": Flag("--eps", "hard steering: fixed offset past max/min (SteerMoE's)", dict(type=float)),
    "eps_std": Flag("--eps-std", "hard steering: add eps_std * N(0, 1) per token and expert, seeded by --seed (the "
                    "paper's eps ~ N(0, 1e-6): --eps 0 --eps-std 1e-6)", dict(type=float)),
    "control": Flag("--control", "replace the steered experts by a control set of the same size",
                    dict(choices=CONTROLS)),
    "divergence": Flag("--divergence", "analyze_routing routing_table.{json,csv} for the correlation",
                       dict(type=Path)),
    "correlation": Flag("--no-correlation", "skip the divergence-accuracy correlation", dict(action="store_false")),
    # steer_eval and correlate: how the task is evaluated (EvalSettings)
    "chat_date": Flag("--chat-date", "the date chat templates see, YYYY-MM-DD (fixed, not today's)"),
    "reasoning_effort": Flag("--reasoning-effort", "passed to the chat template (GPT-OSS: low, medium, high; "
                             "default: the template's own)"),
    "instruction": Flag("--instruction", "text put before every prompt"),
    "template": Flag("--template", "mgsm: prompt with {question}"),
    "stop": Flag("--stop", "mgsm: cut the output at this string (repeatable; default: score the whole answer)",
                 dict(action="append")),
    "answer_format": Flag("--answer-format", "mgsm: score the whole output (plain), GPT-OSS's final channel "
                          "(harmony), or decide from the chat template (auto)",
                          dict(choices=ANSWER_FORMATS)),
    "limit": Flag("--limit", "items per language (default: all)", dict(type=int)),
    "buckets": Flag("--buckets", "comma-separated padded prompt lengths (default: powers of two from 32 up to "
                    "--max-length); each length compiles once", dict(type=_integers)),
    "max_new_tokens": Flag("--max-new-tokens", "mgsm: tokens generated", dict(type=int)),
    "shots": Flag("--shots", "mgsm: exemplars per prompt", dict(type=int)),
    "shot_source": Flag("--shot-source", "mgsm: exemplars from GSM8K train or MGSM itself",
                        dict(choices=SHOT_SOURCES)),
    "options": Flag("--options", "multiple choice: score the option letter or the option text",
                    dict(choices=OPTION_STYLES)),
    "length_normalized": Flag("--length-normalized", "multiple choice: mean log-prob per token",
                              dict(action="store_true")),
}


def new_parser(description: str) -> argparse.ArgumentParser:
    """A parser showing ``description`` (the script's docstring) as written."""
    return argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)


def _default(source: Callable, name: str) -> Any:
    """The default of parameter ``name`` of ``source`` (a settings dataclass or a function), NO_DEFAULT if none."""
    return inspect.signature(source).parameters[name].default


def _shown(value: Any) -> str:
    """`` (default: VALUE)`` for a help text, or "" when there is nothing to show."""
    if value is None or value == ():
        return ""
    return f" (default: {value!r})".replace("%", "%%") if isinstance(value, str) else f" (default: {value})"


def _add(parser: argparse.ArgumentParser, name: str, help: str, **options: Any) -> None:
    flag = FLAGS[name]
    options = {**flag.options, **options}
    if options.get("action") not in ("store_true", "store_false") and "choices" not in options:
        options["metavar"] = flag.option.removeprefix("--").replace("-", "_").upper()
    parser.add_argument(flag.option, dest=name, help=help, **options)


def add_flags(parser: argparse.ArgumentParser, source: Callable, *names: str,
              choices: dict[str, tuple[str, ...]] | None = None, **helps: str) -> None:
    """Add the flags of ``source``'s parameters ``names``, with its defaults; a parameter without a default
    becomes a required flag. ``choices`` narrow a flag's choices to those ``source`` takes (a subset of its
    own); ``helps`` replace a flag's help text."""
    for name in names:
        value, text = _default(source, name), helps.get(name, FLAGS[name].help)
        narrowed = {}
        if choices and name in choices:
            if not set(choices[name]) <= set(FLAGS[name].options.get("choices", ())):
                raise ValueError(f"{FLAGS[name].option}: {choices[name]} are not all among its choices")
            narrowed = {"choices": choices[name]}
        if value is NO_DEFAULT:
            _add(parser, name, text, required=True, **narrowed)
        elif FLAGS[name].options.get("action") in ("store_true", "store_false"):
            _add(parser, name, text)
        else:
            append = FLAGS[name].options.get("action") == "append"
            _add(parser, name, text + _shown(value), default=list(value) if append else value, **narrowed)


def add_overrides(parser: argparse.ArgumentParser, *names: str, **helps: str) -> None:
    """Add flags that replace a recipe's setting when given (None when not given)."""
    for name in names:
        _add(parser, name, helps.get(name, FLAGS[name].help) + " (replaces the recipe's)", default=None)


def add_chat_flags(parser: argparse.ArgumentParser, chat: str) -> None:
    """``--chat`` (the default: ``chat``, e.g. "each passage as one user turn through the chat template") or
    ``--plain`` (plain text)."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--chat", dest="chat", action="store_true", default=True, help=f"{chat} (default)")
    mode.add_argument("--plain", dest="chat", action="store_false", help="plain text instead")


def settings_from(source: Callable, args: argparse.Namespace, **values: Any) -> Any:
    """``source(...)`` with every parameter that ``args`` holds (loaded as its flag says, e.g. a chat
    template file read as text) and ``values``."""
    given = {}
    for name in inspect.signature(source).parameters:
        if name in values or name not in vars(args):
            continue
        value, flag = getattr(args, name), FLAGS.get(name)
        given[name] = flag.load(value) if flag and flag.load and value is not None else value
    return source(**given, **values)
