"""One source for each command-line default: the library the command calls.

The project's rule: config dataclasses (or the library function's signature) hold the
defaults; argparse defaults, choices and the ``[default]`` of the help texts are derived
from them (:func:`hitstream.cli.default_of`). These tests fail when the two drift apart:

- every option of every ``trainer`` command that has a default is mapped here to the
  library field or parameter it stands for, and its parser default (and the default its
  help shows) equals the library's;
- each command run with only its required arguments calls its library function with the
  library's own defaults (the call is recorded, nothing runs);
- ``streamer serve`` and ``streamer replay`` likewise against their config dataclasses.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import inspect
from pathlib import Path
from typing import Any

import pytest

from hitstream.cli import build_parser, default_of, show_default

ROOT = Path(__file__).resolve().parents[1]


def _trainer_parsers() -> dict[str, argparse.ArgumentParser]:
    from trainer.cli import COMMANDS

    return build_parser("trainer", "", COMMANDS)[1]


def _library(command: str) -> dict[str, tuple[Any, str]]:
    """``{dest: (dataclass or function, field or parameter)}`` of a trainer command's options
    that have a default."""
    from hitstream.resample_run import resample_to_file
    from hitstream.simulate import simulate_to_file
    from trainer.labelling.refit import RefitConfig
    from trainer.labelling.server import LabelServer
    from trainer.labelling.session import open_session
    from trainer.model.build_default import build_default
    from trainer.model.evaluate import evaluate_bundle
    from trainer.model.finetune import finetune_bundle
    from trainer.model.train_bundle import TrainOptions
    from trainer.model.unlabelled import UnlabelledConfig
    from trainer.templates.features import PolarConfig
    from trainer.templates.from_run import build_bank_from_run
    from trainer.templates.rank import rank_to_files

    def same(obj: Any, *names: str) -> dict[str, tuple[Any, str]]:
        return {n: (obj, n) for n in names}

    return {
        "simulate": same(simulate_to_file, "seed", "dataset", "compression", "chunk"),
        "train": {
            **same(
                TrainOptions,
                "dataset",
                "photon_unit",
                "val_fraction",
                "epochs",
                "batch_size",
                "learning_rate",
                "seed",
                "keep",
                "target_precision",
            ),
            "arch": (TrainOptions, "architecture"),
        },
        "templates": {
            **same(build_bank_from_run, "photon_unit", "cls", "mode"),
            "max": (build_bank_from_run, "max_frames"),
            **same(PolarConfig, "n_angles", "linear_weight", "smooth_px", "r_min_px", "r_max_px"),
            "harmonics": (PolarConfig, "n_harmonics"),
        },
        "rank": same(rank_to_files, "photon_unit", "top", "chunk"),
        "build-default": same(build_default, "out", "workers", "architecture"),
        "export": {},
        "evaluate": same(evaluate_bundle, "photon_unit", "positive", "bins", "batch", "threads"),
        "finetune": {
            **same(
                finetune_bundle,
                "photon_unit",
                "learning_rate",
                "batch_size",
                "holdout_fraction",
                "seed",
            ),
            "unlabelled": (UnlabelledConfig, "frames"),
            "pseudo_threshold": (UnlabelledConfig, "threshold"),
        },
        "label": {
            **same(open_session, "photon_unit", "classes", "page_size", "crop"),
            **same(LabelServer, "host", "port"),
            "refit_every": (RefitConfig, "every"),
        },
        "resample": same(resample_to_file, "out_dataset", "photon_unit"),
    }[command]


# options whose default the help text does not show as "[default]" (it says what it means)
HELP_SAYS_OTHERWISE = {
    ("simulate", "seed"),
    ("templates", "max"),
    ("templates", "r_max_px"),
    ("build-default", "architecture"),
}
# store_true flags that turn off a library default of True
NEGATED = {"no_augment", "no_png", "no_truth", "no_end_marker"}


def _expected(value: Any) -> Any:
    """A library default as the parser holds it: sequences of names comma-separated."""
    return ",".join(value) if isinstance(value, tuple | list) else value


def _options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in p._actions if a.option_strings and a.dest != "help"}


TRAINER_COMMANDS = (
    "simulate",
    "train",
    "templates",
    "rank",
    "build-default",
    "export",
    "evaluate",
    "finetune",
    "label",
    "resample",
)


def test_every_trainer_command_is_checked() -> None:
    from trainer.cli import COMMANDS

    assert set(COMMANDS) == set(TRAINER_COMMANDS)


@pytest.mark.parametrize("command", TRAINER_COMMANDS)
def test_trainer_option_defaults_are_the_library_defaults(command: str) -> None:
    options = _options(_trainer_parsers()[command])
    mapped = _library(command)
    for dest, (obj, name) in mapped.items():
        want = _expected(default_of(obj, name))
        action = options[dest]
        assert action.default == want, (
            f"trainer {command} {action.option_strings[-1]}: parser default "
            f"{action.default!r}, library ({obj.__qualname__}.{name}) {want!r}"
        )
        if (command, dest) not in HELP_SAYS_OTHERWISE:
            shown = {f"[{show_default(want)}", f"[{want}"}
            assert any(s in (action.help or "") for s in shown), (
                f"trainer {command} {action.option_strings[-1]}: help {action.help!r} does not "
                f"show the default {show_default(want)}"
            )
    # an option with a default that is not mapped above would be a second source
    for dest, action in options.items():
        if action.default in (None, False) or dest in mapped:
            continue
        raise AssertionError(
            f"trainer {command} {action.option_strings[-1]} has the default "
            f"{action.default!r}: read it from the library and map it in _library()"
        )


# what each command calls, and the fewest arguments it accepts
CALLS = {
    "simulate": ("hitstream.simulate", "simulate_to_file", ["out.h5", "--frames", "3"]),
    "train": ("trainer.model.train_bundle", "train_bundle", ["r.h5", "--out", "m"]),
    "templates": (
        "trainer.templates.from_run",
        "build_bank_from_run",
        ["r.h5", "--dataset", "d", "--labels", "l.csv", "--out", "b.h5"],
    ),
    "rank": ("trainer.templates.rank", "rank_to_files", ["r.h5", "--dataset", "d", "--bank", "b"]),
    "build-default": ("trainer.model.build_default", "build_default", []),
    "export": ("trainer.model.reexport", "reexport", ["--keras", "m.keras", "--out", "o"]),
    "evaluate": (
        "trainer.model.evaluate",
        "evaluate_bundle",
        ["--model", "m", "--data", "r.h5", "--dataset", "d", "--labels", "l.csv"],
    ),
    "finetune": (
        "trainer.model.finetune",
        "finetune_bundle",
        ["--model", "m", "--data", "r.h5", "--dataset", "d", "--labels", "l.csv", "--out", "o"],
    ),
    "label": (
        "trainer.labelling.session",
        "open_session",
        ["r.h5", "--dataset", "d", "--labels", "l.csv"],
    ),
    "resample": (
        "hitstream.resample_run",
        "resample_to_file",
        ["r.h5", "--dataset", "d", "--config", "c.toml", "--model", "m", "--out", "o.h5"],
    ),
}


class _Called(Exception):
    pass


@pytest.mark.parametrize("command", TRAINER_COMMANDS)
def test_trainer_commands_call_the_library_with_its_defaults(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run with only its required arguments, a command passes every parameter that has a
    default in the library function's signature that very default."""
    from trainer.cli import COMMANDS

    module, name, argv = CALLS[command]
    lib = importlib.import_module(module)
    fn = getattr(lib, name)
    calls: list[inspect.BoundArguments] = []

    @functools.wraps(fn)  # the same signature, for the defaults the command reads at run time
    def record(*args: Any, **kwargs: Any) -> None:
        calls.append(inspect.signature(fn).bind(*args, **kwargs))
        raise _Called

    args = _trainer_parsers()[command].parse_args(argv)
    monkeypatch.setattr(lib, name, record)
    monkeypatch.delenv("HITSTREAM_HTTP_TOKEN", raising=False)
    with pytest.raises(_Called):
        importlib.import_module(COMMANDS[command]).run(args)
    (bound,) = calls
    checked = 0
    for pname, param in inspect.signature(fn).parameters.items():
        if param.default is inspect.Parameter.empty or pname not in bound.arguments:
            continue
        got = bound.arguments[pname]
        if (command, pname) == ("train", "name"):  # the --out directory's name
            assert got == "m"
            continue
        if (command, pname) == ("templates", "polar"):  # built from the polar options
            from trainer.templates.features import PolarConfig

            assert got == PolarConfig()
            continue
        assert got == param.default, (
            f"trainer {command} passes {name}({pname}={got!r}); the library's default is "
            f"{param.default!r}"
        )
        checked += 1
    assert checked or command == "export"


def test_architecture_choices_are_the_networks_that_exist() -> None:
    """``trainer train --arch`` offers the architectures trainer.model.cnn builds (their
    names live in the keras-free trainer.model.inputs)."""
    from trainer.model.build_default import BUILD_ARCHITECTURES
    from trainer.model.cnn import BUILDERS
    from trainer.model.inputs import ARCHITECTURES as CNN

    assert set(BUILDERS) == set(CNN)
    parsers = _trainer_parsers()
    assert tuple(_options(parsers["train"])["arch"].choices or ()) == tuple(CNN)
    build = _options(parsers["build-default"])["architecture"]
    assert tuple(build.choices or ()) == BUILD_ARCHITECTURES
    assert set(BUILD_ARCHITECTURES) <= set(CNN)


@pytest.mark.parametrize("path", sorted((ROOT / "trainer" / "commands").glob("*.py")), ids=str)
def test_commands_write_no_literal_default(path: Path) -> None:
    """``default=`` of an option is read from the library, never written as a literal (a
    literal equal to the library's default today would drift tomorrow)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"):
            continue
        for kw in node.keywords:
            if kw.arg == "default":
                literal = isinstance(kw.value, ast.Constant | ast.Tuple | ast.List) or (
                    isinstance(kw.value, ast.Call) and getattr(kw.value.func, "id", "") == "Path"
                )
                assert not literal or getattr(kw.value, "value", 0) is None, (
                    f"{path.name}:{node.lineno}: default={ast.unparse(kw.value)} is a literal"
                )


def test_default_of_reads_fields_parameters_and_says_when_there_is_none() -> None:
    import dataclasses

    @dataclasses.dataclass
    class C:
        a: int
        b: int = 3
        c: list[int] = dataclasses.field(default_factory=lambda: [1])

    def f(x: int, y: float = 0.5, *, z: str = "q") -> None:
        pass

    assert default_of(C, "b") == 3 and default_of(C, "c") == [1]
    assert default_of(f, "y") == 0.5 and default_of(f, "z") == "q"
    from hitstream.simulate import SimConfig

    assert default_of(SimConfig, "geometry.distance_m") == SimConfig().geometry.distance_m
    for obj, name in ((C, "a"), (C, "nope"), (f, "x"), (f, "nope")):
        with pytest.raises(TypeError, match=repr(name)):
            default_of(obj, name)
    shown = [show_default(v) for v in (5e-4, 2e-3, 0.3, 1.0, 586.0, 64, ("single", "empty"))]
    assert shown == ["5e-4", "2e-3", "0.3", "1", "586", "64", "single,empty"]


# --- streamer ------------------------------------------------------------------------------


def _streamer_parsers() -> dict[str, argparse.ArgumentParser]:
    from streamer.cli import COMMANDS

    return build_parser("streamer", "", COMMANDS)[1]


def test_streamer_serve_flags_show_the_config_defaults() -> None:
    """``streamer serve`` flags override the config: no default of their own; the help shows
    the ServeConfig default, and values are converted to the config field's type."""
    from streamer import config as cfg
    from streamer.serve import FLAG_KEYS

    options = _options(_streamer_parsers()["serve"])
    for flag, key in FLAG_KEYS.items():
        action = options[flag]
        default = cfg.default_of(key)
        assert action.default is None, f"--{flag}: a default beside the config's"
        assert f"[{key} = {default}]" in (action.help or ""), action.help
        if isinstance(default, int | float) and not isinstance(default, bool):
            assert action.type is type(default), f"--{flag}: {action.type} for {default!r}"
    for dest, action in options.items():
        assert action.default in (None, False, []), f"serve --{dest}: default {action.default!r}"


def test_streamer_replay_defaults_are_replay_config() -> None:
    import dataclasses

    from streamer.replay import ReplayConfig, config_from_args

    parser = _streamer_parsers()["replay"]
    assert config_from_args(parser.parse_args(["f.h5"])) == ReplayConfig(path=Path("f.h5"))
    fields = {f.name for f in dataclasses.fields(ReplayConfig)}
    renamed = {"linger": "linger_s"}
    for dest, action in _options(parser).items():
        if dest in NEGATED:
            assert action.default is False
            assert default_of(ReplayConfig, dest.removeprefix("no_")) is True
            continue
        field = renamed.get(dest, dest)
        assert field in fields, f"replay --{dest}: no ReplayConfig field {field!r}"
        assert action.default == default_of(ReplayConfig, field), f"replay --{dest}"
