"""The ``alzaudit`` command line.

The application layer, on top of ``suites``, ``reports``, ``audit`` and ``model``. Sub-commands live in
``alzaudit/commands/*.py``; each module defines ``register(top, data)`` that adds its
parsers (``top``: top-level sub-commands, ``data``: the ``alzaudit data …`` group) with
``set_defaults(func=run)``. Modules must not import TensorFlow at import time, so ``alzaudit --help``
and the data commands start in about a second.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from audit.tflog import quiet_tensorflow
from model.errors import AlzAuditError, ParameterError

# Library parameters whose command-line flag is not "--" + the name with dashes.
FLAGS = {"n_samples": "--samples", "noise_level": "--noise", "scheme": "--ig-scheme", "epochs_phase1": "--epochs1",
         "epochs_phase2": "--epochs2", "lr_phase1": "--lr1", "lr_phase2": "--lr2", "groups": "--group"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alzaudit",
        description="Train, explain, audit and gate Alzheimer's-stage classifiers on brain MRI slices.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    data_parser = top.add_parser("data", help="index, split, summarise, synthesise and leak-check datasets")
    data = data_parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data_parser.set_defaults(func=lambda args: _missing_subcommand(data_parser))
    import alzaudit.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"alzaudit.commands.{info.name}")
        if hasattr(module, "register"):
            module.register(top, data)
    return parser


def _missing_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    quiet_tensorflow()  # TensorFlow's C++ start-up log stays out (ALZAUDIT_TF_LOGS=1 shows it)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except ParameterError as exc:  # the library names its parameter; a CLI user reads the flag
        print(f"alzaudit: error: {exc.with_flag(FLAGS)}", file=sys.stderr)
        return 2
    except AlzAuditError as exc:
        print(f"alzaudit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alzaudit: interrupted (outputs written so far are complete; --resume continues training)",
              file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a user error: one line unless --debug
        if args.debug:
            raise
        print(f"alzaudit: internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:500]} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
