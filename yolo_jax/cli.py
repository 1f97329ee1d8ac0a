"""The command-line front shared by every program (`main`, `export`, `anchors`, `data.convert`).

A program declares its own flags in a function and hands its entry point to `run`:

    def _define_flags() -> None:
        flags.DEFINE_string('output', None, 'Where to write.')

    def main() -> None:            # reads flags.FLAGS (FLAGS.config: the loaded, locked ConfigDict)
        ...

    if __name__ == '__main__':
        cli.run(main, _define_flags)

and so gets, by construction:

* the common flags: `--config=FILE[:variant,...]` (an ml-collections config file; every field can be overridden
  with `--config.a.b=VALUE`) unless `run(..., config=False)`, and `--verbose`;
* the error contract of errors.py: a user mistake is ONE `error: ...` line on stderr naming the flag, config field
  or file, and exit code 2, without a traceback (`--verbose` or YOLO_JAX_TRACEBACK=1 show it too). That covers
  absl's flag errors (unknown flag, bad value, bad enum value, missing required flag: absl would print its usage
  text or a FATAL line), a config file that does not exist or does not load, an unknown variant, an override of
  a config field that does not exist (`unknown config field config.a.b; did you mean config.a.c?`), positional
  arguments, and any errors.UserError the program raises. Other exceptions are bugs: traceback, exit code 1.

Flags are parsed here and nowhere else; this module computes nothing else.
"""

from __future__ import annotations

import atexit
import difflib
import importlib.util
import inspect
import os
import re
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from yolo_jax import errors, run_config
from yolo_jax.errors import ConfigError, FlagError, MissingFileError

CONFIG_FLAG = 'config'
_CONFIG_VALUE = re.compile(rf'^--?{CONFIG_FLAG}(=|$)')
_OVERRIDE = re.compile(rf'^--?(?:no)?{CONFIG_FLAG}\.([^=]+)')
_LIST_FIELD = re.compile(r"Type <class 'list'> of field (\S+) is not supported for overriding")
_EXCEPTION_PREFIX = re.compile(r'^(?:[A-Za-z_][\w.]*)?(?:Error|Exception): ')


def define_common_flags(*, config: bool = True) -> None:
    """Defines --verbose and, with `config`, the required --config (a config file, locked: only existing fields can
    be overridden)."""
    if config:
        config_flags.DEFINE_config_file(CONFIG_FLAG, None, 'Configuration file: configs/*.py[:variant,...].',
                                        lock_config=True)
        flags.mark_flags_as_required([CONFIG_FLAG])
    flags.DEFINE_bool('verbose', False, 'Show the traceback of user errors (bad flags, config, data or inputs) too; '
                      f'or set {errors.TRACEBACK_ENV}=1.')


# ----------------------------------------------------------------------------------------------------------------
# The config file.


def config_argument(argv: Sequence[str]) -> str | None:
    """The value of the last --config=VALUE (or `--config VALUE`) in argv[1:], None when there is none."""
    value = None
    for i, arg in enumerate(argv[1:], 1):
        m = _CONFIG_VALUE.match(arg)
        if m and m.group(1) == '=':
            value = arg.split('=', 1)[1]
        elif m and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def load_config(spec: str) -> ml_collections.ConfigDict:
    """The config of `--config=spec`, spec = 'path/to/file.py' or 'path/to/file.py:variant,...', loaded as
    ml_collections' config flag does (the file's `get_config(variant)`; a path relative to the working directory).

    Raises MissingFileError for a missing file and ConfigError for a file that does not load, defines no
    get_config, takes no variants when given some, rejects a variant or returns no ConfigDict; each message names
    --config and the file.
    """
    path_text, colon, variant = spec.partition(':')
    path = Path(path_text)
    if not path_text:
        raise FlagError(f'--config={spec}: no config file given (expected configs/FILE.py[:variant,...])')
    if not path.is_file():
        raise MissingFileError(f'--config={spec}: no such file {path}')
    module_spec = importlib.util.spec_from_file_location(f'{CONFIG_FLAG}_config', path)
    if module_spec is None:
        raise ConfigError(f'--config={spec}: {path} is not a Python file (expected configs/FILE.py)')
    try:
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any failure of the user's file is reported as such
        raise ConfigError(f'--config={spec}: {path} does not load: {_one_line(e)}') from e
    get_config = getattr(module, 'get_config', None)
    if not callable(get_config):
        raise ConfigError(f'--config={spec}: {path} defines no get_config()')
    args = (variant,) if colon else ()
    try:
        inspect.signature(get_config).bind(*args)
    except TypeError as e:
        raise ConfigError(f'--config={spec}: {path} has no variants (its get_config() takes no argument)'
                          if args else f'--config={spec}: {path}: get_config() needs a variant') from e
    try:
        config = get_config(*args)
    except errors.UserError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ConfigError(f'--config={spec}: {_one_line(e)}') from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f'--config={spec}: {path}: get_config() returned {type(config).__name__}, not a ConfigDict')
    return config


def unknown_field(config: ml_collections.ConfigDict, argv: Sequence[str]) -> str | None:
    """'unknown config field config.a.b; did you mean config.a.c?' for the first --config.a.b override in argv
    whose path `config` lacks (else the fields of config.a are listed), or None when every path exists."""
    for arg in argv[1:]:
        m = _OVERRIDE.match(arg)
        if not m:
            continue
        node, parts = config, m.group(1).split('.')
        for i, key in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict):
                break  # inside a value (a tuple, a string): ml_collections' own parser judges it
            if key not in node:
                prefix = '.'.join([CONFIG_FLAG, *parts[:i]])
                keys = list(node.keys())
                close = difflib.get_close_matches(key, keys, n=1)
                listed = ', '.join(keys[:12]) + (', ...' if len(keys) > 12 else '')
                hint = f'; did you mean {prefix}.{close[0]}?' if close else f' ({prefix} has {listed})'
                return f'unknown config field {prefix}.{key}{hint}'
            node = node[key]
    return None


def _newer_than_the_file(argv: Sequence[str], spec: str) -> str:
    """The advice for an override of a field that a WORKDIR/config.py lacks but yolo_jax has (the file was written
    by a version older than the field, before config.py filled such fields in itself), else ''."""
    from yolo_jax.defaults import default_config  # noqa: PLC0415

    if not run_config.is_run_config(spec) or unknown_field(default_config(), argv) is not None:
        return ''
    return (f' ({spec} was written by an older yolo_jax, before this field existed: add the field to the JSON in that '
            'file to override it)')


# ----------------------------------------------------------------------------------------------------------------
# Parsing and running.


def _one_line(error: BaseException) -> str:
    """The last non-empty line of an error's text (absl and ml_collections put the reason last), without a leading
    'SomethingError: '."""
    text = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = _EXCEPTION_PREFIX.sub('', lines[-1] if lines else type(error).__name__)
    quoted = len(line) > 1 and line[0] == line[-1] and line[0] in '\'"'  # a KeyError's repr of its key
    return line[1:-1] if quoted else line


def parse_flags(argv: list[str], *, config: bool = True, training_modes: tuple[str, ...] | None = None) -> list[str]:
    """absl's flag parsing (app.run's flags_parser), with every mistake one `error:` line and exit code 2.

    With `config`, the config file is loaded first (load_config) so that its errors and overrides of unknown fields
    are named precisely; then absl parses everything (and loads the file again, as its flag's value).
    `training_modes` (not None): a program that reads a workdir; without `--config`, and outside these `--mode`s,
    it takes the run's own `--config=WORKDIR/config.py` (run_config.py).
    """
    verbose = errors.show_traceback(argv)
    if config and training_modes is not None:
        argv = run_config.default_config_flag(argv, training_modes)
    loaded = None
    try:
        spec = config_argument(argv) if config else None
        if spec is not None:
            loaded = load_config(spec)
            if (message := unknown_field(loaded, argv)) is not None:
                raise ConfigError(message + _newer_than_the_file(argv, spec))
        return flags.FLAGS(argv)
    except errors.UserError as e:
        errors.report_and_exit(e, verbose=verbose)
    except flags.Error as e:  # unknown flag, bad value or enum value, missing required flag, bad override value
        message = _one_line(e)
        m = _LIST_FIELD.match(message)
        if m and run_config.is_run_config(config_argument(argv)):  # written before tuples were read back as tuples
            message = (f'cannot override {m.group(1)}: {config_argument(argv)} was written by an older yolo_jax, '
                       'which saved tuples as lists (write the field as a tuple in that file, or pass '
                       "--config=configs/FILE.py with the run's flags)")
        errors.report_and_exit(e, verbose=verbose, message=message)
    except (AttributeError, KeyError) as e:  # ml_collections: an override the pre-check could not place
        known = unknown_field(loaded, argv) if loaded is not None else None
        errors.report_and_exit(e, verbose=verbose, message=known or f'bad config override: {_one_line(e)}')
    raise AssertionError('unreachable')


def run(main_fn: Callable[[], None], define_flags: Callable[[], None] | None = None, *, config: bool = True,
        training_modes: tuple[str, ...] | None = None) -> None:
    """Defines the common flags and the program's (`define_flags`), parses the command line and calls `main_fn()`
    under absl's app.run; user mistakes end the program with one `error:` line and exit code 2 (module docstring).
    `training_modes`: see `parse_flags` (programs that read a workdir's run).
    """
    define_common_flags(config=config)
    if define_flags is not None:
        define_flags()

    def entry(argv: list[str]) -> None:
        try:
            if len(argv) > 1:
                raise FlagError(f'unexpected arguments {" ".join(argv[1:])!r} (flags are --name=value)')
            main_fn()
        except errors.UserError as e:
            errors.report_and_exit(e, verbose=flags.FLAGS.verbose or errors.show_traceback())
        except app.UsageError as e:
            errors.report_and_exit(e, verbose=flags.FLAGS.verbose or errors.show_traceback(), message=_one_line(e))

    try:
        app.run(entry, flags_parser=lambda argv: parse_flags(argv, config=config, training_modes=training_modes))
    except SystemExit as e:  # success, or a user mistake reported above (an unexpected exception is not caught)
        exit_now(e.code)


def exit_now(code: int | str | None) -> NoReturn:
    """Ends the process as Python's own exit does (non-daemon threads joined, atexit handlers run, output
    flushed), then skips the interpreter's teardown of TensorFlow's and JAX's modules and native state: ~1.4 s
    of every command's end on this machine's CPUs, with nothing left to write by then."""
    if isinstance(code, str):  # sys.exit('message'): printed, exit status 1
        print(code, file=sys.stderr)
        code = 1
    threading._shutdown()  # what the interpreter's exit does first: stops thread pools, joins non-daemon threads
    atexit._run_exitfuncs()  # logging.shutdown, jax.distributed's shutdown, orbax, ...
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
