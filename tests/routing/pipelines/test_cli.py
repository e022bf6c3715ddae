"""The scripts' flags: defaults are the library's, a flag means the same in every script, files load late."""
import argparse
from pathlib import Path

import pytest

from routing.eval.tasks import EvalSettings
from routing.pipelines.analyze_routing import AnalysisConfig
from routing.pipelines.cli import FLAGS, add_flags, settings_from, user_errors
from routing.pipelines.correlate import CorrelateConfig
from routing.pipelines.experts_file import ExpertSettings
from routing.pipelines.steer_eval import SteerEvalConfig
from routing.window import Window
from tests.helpers.scripts import script, script_module


def parser_of(name: str) -> argparse.ArgumentParser:
    return script_module(name).build_parser()


def test_script_defaults_are_the_library_defaults():
    """With only the required flags, each script builds the settings the library builds by default (scripts
    render through the chat template unless --plain)."""
    args = parser_of("analyze_routing").parse_args(["--model", "m", "--data-dir", "d", "--out", "o"])
    assert settings_from(AnalysisConfig, args) == AnalysisConfig(model="m", source_dir=Path("d"), out_dir=Path("o"))

    args = parser_of("correlate").parse_args(["--model", "m", "--data-dir", "d", "--out", "o"])
    config = settings_from(CorrelateConfig, args, eval=EvalSettings())
    assert config == CorrelateConfig(model="m", source_dir=Path("d"), out_dir=Path("o"))

    args = parser_of("steer_eval").parse_args(["--model", "m", "--task", "mgsm", "--experts", "e", "--langs", "fr",
                                               "--out", "o"])
    assert settings_from(EvalSettings, args) == EvalSettings(chat=True)
    assert settings_from(SteerEvalConfig, args, eval=EvalSettings()) == SteerEvalConfig(
        model="m", task="mgsm", experts=Path("e"), out_dir=Path("o"), languages=("fr",))

    args = parser_of("find_experts").parse_args(["--model", "m", "--task", "mgsm", "--tau", "0.3", "--window", "1:2",
                                                 "--out", "o"])
    assert settings_from(ExpertSettings, args, window=Window(1, 2)) == ExpertSettings(
        task="mgsm", window=Window(1, 2), tau=0.3, chat=True)


def test_a_flag_means_the_same_setting_in_every_script():
    dests: dict[str, set[str]] = {}
    for name in ("analyze_routing", "correlate", "find_experts", "steer_eval", "reproduce"):
        for action in parser_of(name)._actions:
            for option in action.option_strings:
                dests.setdefault(option, set()).add(action.dest)
    assert dests["--data-dir"] == {"source_dir"} and dests["--tfds-dir"] == {"tfds_dir"}
    assert dests["--no-progress"] == {"progress"} and dests["--plain"] == {"chat"}
    assert {option: names for option, names in dests.items() if len(names) > 1} == {}
    assert {flag.option for flag in FLAGS.values()} <= set(dests)  # every declared flag is used by a script


def test_required_flags_and_files_read_after_parsing(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="prog")
    add_flags(parser, AnalysisConfig, "model", "chat_template", "batch_size")
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --model has no default: required
    assert "--model" in capsys.readouterr().err
    template = tmp_path / "template.jinja"
    template.write_text("{{ messages }}", encoding="utf-8")
    args = parser.parse_args(["--model", "m", "--chat-template", str(template), "--batch-size", "3"])
    assert settings_from(AnalysisConfig, args, source_dir=Path("d"), out_dir=Path("o")).chat_template == "{{ messages }}"
    missing = parser.parse_args(["--model", "m", "--chat-template", str(tmp_path / "missing.jinja")])
    with pytest.raises(SystemExit) as exit_info, user_errors(parser):
        settings_from(AnalysisConfig, missing, source_dir=Path("d"), out_dir=Path("o"))
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.startswith("prog: error: ") and "missing.jinja" in error
    assert len(error.strip().splitlines()) == 1


CHOICE_FLAGS = ("--data", "--task", "--mode", "--control", "--dtype", "--answer-format", "--truncate", "--options",
                "--shot-source")


def test_flags_with_fixed_values_take_the_same_choices_in_every_script():
    declared = {flag.option: tuple(flag.options["choices"]) for flag in FLAGS.values() if "choices" in flag.options}
    assert set(CHOICE_FLAGS) == set(declared)
    seen = set()
    for name in ("analyze_routing", "correlate", "find_experts", "steer_eval", "reproduce"):
        for action in parser_of(name)._actions:
            for option in set(action.option_strings) & set(declared):
                seen.add(option)
                if (name, option) == ("find_experts", "--task"):  # the tasks that have expert data
                    assert tuple(action.choices) == ("mgsm", "medical", "organism")
                elif (name, option) == ("correlate", "--task"):  # the data suites' correlation tasks
                    assert tuple(action.choices) == ("belebele", "organism")
                else:
                    assert tuple(action.choices) == declared[option], (name, option)
    assert seen == set(declared)


@pytest.mark.parametrize("name, argv", [
    ("steer_eval", ["--model", "m", "--task", "gsm", "--experts", "e", "--langs", "fr", "--out", "o"]),
    ("steer_eval", ["--model", "m", "--task", "mgsm", "--experts", "e", "--langs", "fr", "--out", "o", "--mode", "x"]),
    ("steer_eval", ["--model", "m", "--task", "mgsm", "--experts", "e", "--langs", "fr", "--out", "o",
                    "--control", "outside"]),
    ("find_experts", ["--model", "m", "--task", "belebele", "--tau", "0.3", "--window", "1:2", "--out", "o"]),
    ("analyze_routing", ["--model", "m", "--data-dir", "d", "--out", "o", "--dtype", "float16"]),
    ("reproduce", ["recipe.json", "--out", "o", "--dtype", "float16"]),
    ("convert", ["m", "o", "--dtype", "float16"]),
])
def test_a_value_outside_the_choices_is_refused_naming_them(name, argv, capsys):
    with pytest.raises(SystemExit) as exit:
        script(name)(argv)
    assert exit.value.code == 2 and "invalid choice" in capsys.readouterr().err
