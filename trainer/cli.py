"""``trainer`` command line: simulate runs, build template banks, train, evaluate, export.

TensorFlow's start-up messages (oneDNN, CPU features, C++ INFO/ERROR lines) are hidden
unless ``-v`` is given: see :func:`quiet_tensorflow`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

from hitstream.cli import run_commands

COMMANDS = {
    "simulate": "trainer.commands.simulate",
    "train": "trainer.commands.train",
    "templates": "trainer.commands.templates",
    "rank": "trainer.commands.rank",
    "build-default": "trainer.commands.build_default",
    "export": "trainer.commands.export",
    "evaluate": "trainer.commands.evaluate",
    "finetune": "trainer.commands.finetune",
    "label": "trainer.commands.label",
    "resample": "trainer.commands.resample",
}
# TensorFlow's C++ logging: 3 hides INFO, WARNING and ERROR lines (e.g. node_def_util's);
# gRPC's own logging likewise. Values already in the environment win.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR"}


def quiet_tensorflow(args: argparse.Namespace) -> None:
    """Unless ``-v``: quiet TensorFlow's C++ logging, and hide what it writes to stderr
    while ``tensorflow`` is first imported (the oneDNN notice comes before its logging
    reads any setting). Nothing is imported here; commands that never use TensorFlow do
    not pay for it."""
    if args.verbose or "tensorflow" in sys.modules:
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport("tensorflow"))


@contextlib.contextmanager
def _stderr_to_devnull() -> Iterator[None]:
    """File descriptor 2 (C and C++ code included) to /dev/null for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


class _QuietLoader(importlib.abc.Loader):
    """The real loader of a module, executed with stderr hidden."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with _stderr_to_devnull():
            self._loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:  # get_data, is_package, resource readers, ...
        return getattr(self._loader, name)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds ``name`` the usual way, once, and has its loader run quietly."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def main(argv: Sequence[str] | None = None) -> int:
    description = (__doc__ or "").partition("\n")[0]
    return run_commands("trainer", description, COMMANDS, argv, before_run=quiet_tensorflow)
