"""Command line: `python -m yolo_jax.main --config=configs/mnist.py --workdir=DIR [--mode=train]`.

Parses flags and hands off; every behaviour lives in the module for its mode. Any config field can be
overridden, e.g. `--config.train.epochs=5 --config.model.input_size=320`.
"""

import difflib
import logging as pylogging
import os
import re
import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from yolo_jax import cpu_env, errors, supervise

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Configuration file: configs/*.py[:variant].', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and metrics.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'detect'], 'What to run.')
flags.DEFINE_string('images', None, 'detect: an image file, a directory or a glob.')
flags.DEFINE_string('video', None, 'detect: a video file or camera index (a video path also works as --images).')
flags.DEFINE_string('output', None, 'detect/eval: where to write results (default: WORKDIR/<mode>).')
flags.DEFINE_string('weights', None, 'detect/eval: a Darknet .weights file to use instead of the checkpoint.')
flags.DEFINE_bool('xla_cpu_ynn_dot', True, 'On CPU with float32, run dots and reductions with YNNPACK (XLA flag '
                  f'{cpu_env.YNN_DOT_FLAG}; measured ~35% faster train steps here); skipped for bfloat16, whose '
                  "YNN dots are slower than XLA's.")
flags.DEFINE_string('coordinator_address', '', 'Multi-host: host:port of process 0 (hosts started by hand; with '
                    '--num_processes and --process_id).')
flags.DEFINE_integer('num_processes', 0, 'Multi-host: number of processes (with --coordinator_address).')
flags.DEFINE_integer('process_id', -1, 'Multi-host: this process, 0..num_processes-1 (with --coordinator_address).')
flags.DEFINE_integer('heartbeat_timeout_seconds', 100, 'Multi-host: a process silent this long ends the others '
                     'with an error instead of a hang.')
flags.DEFINE_integer('coordinator_timeout_seconds', 300, 'Multi-host: give up (one error line naming the address) '
                     'when not every process has connected to the coordinator within this many seconds.')
flags.DEFINE_bool('distributed', False, 'Multi-host on a cluster (SLURM, Open MPI, ...): detect the processes '
                  'automatically (jax.distributed.initialize()).')
flags.DEFINE_bool('jemalloc', True, 'Restart under jemalloc (if installed: apt-get install libjemalloc2), '
                  'keeping freed memory: measured faster and steadier CPU steps (README, benchmarks).')
flags.DEFINE_bool('malloc_tuning', True, 'Without jemalloc: tune glibc malloc (mallopt) to keep freed memory '
                  'instead of returning and re-faulting it every step (measured faster CPU epochs, README).')
flags.DEFINE_bool('verbose', False, f'Show the traceback of user errors (bad config, data or inputs) too; or set '
                  f'{errors.TRACEBACK_ENV}=1.')
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries:
    """absl log filter: drops INFO chatter of orbax (tens of lines per checkpoint); keeps its warnings."""

    def filter(self, record) -> bool:
        return record.levelno >= pylogging.WARNING or 'orbax' not in record.pathname


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    if FLAGS.jemalloc:
        cpu_env.exec_with_jemalloc(['-m', 'yolo_jax.main', *sys.argv[1:]])
    if (FLAGS.coordinator_address or FLAGS.distributed) and not supervise.is_child():
        # A lost peer or coordinator ends JAX processes by a native abort: run the work in a child and report it
        # as one error line (supervise.py explains).
        env_id = os.environ.get('SLURM_PROCID', os.environ.get('OMPI_COMM_WORLD_RANK', '-1'))
        supervise.run_supervised(sys.argv[1:], process_id=FLAGS.process_id if FLAGS.coordinator_address else
                                 int(env_id), num_processes=FLAGS.num_processes, coordinator=FLAGS.coordinator_address,
                                 timeout_s=FLAGS.coordinator_timeout_seconds, workdir=FLAGS.workdir)
    if FLAGS.malloc_tuning and cpu_env.tune_glibc_malloc():
        logging.info('glibc malloc tuned to keep freed memory (%s)', cpu_env.GLIBC_MALLOC_TUNING)
    logging.get_absl_logger().addFilter(_QuietLibraries())  # orbax logs through absl's logger
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    # TF only feeds the input pipeline: keep it off the accelerators that JAX uses.
    import tensorflow as tf  # noqa: PLC0415

    tf.config.set_visible_devices([], 'GPU')
    config = FLAGS.config
    # Before JAX starts its backend; YNN's bfloat16 dots are slower than XLA's, so float32 only.
    cpu_env.set_ynn_dot_flag(FLAGS.xla_cpu_ynn_dot and config.model.dtype == 'float32')
    from yolo_jax import parallel  # noqa: PLC0415  (JAX: after the XLA flags are set)

    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                                    auto=FLAGS.distributed, heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_seconds,
                                    coordinator_timeout_seconds=FLAGS.coordinator_timeout_seconds)
    logging.info('Config:\n%s', config)
    if FLAGS.mode == 'train':
        from yolo_jax import train  # noqa: PLC0415

        train.train_and_evaluate(config, FLAGS.workdir)
    elif FLAGS.mode == 'eval':
        from yolo_jax import evaluation  # noqa: PLC0415

        evaluation.evaluate_checkpoint(config, FLAGS.workdir, output=FLAGS.output, weights=FLAGS.weights)
    else:
        from yolo_jax import detect  # noqa: PLC0415

        images = FLAGS.video or FLAGS.images
        if not images:
            raise app.UsageError('--mode=detect needs --images=PATH|DIR|GLOB|VIDEO or --video=PATH|CAMERA_INDEX')
        detect.detect_images(config, FLAGS.workdir, images, output=FLAGS.output, weights=FLAGS.weights)


# ----------------------------------------------------------------------------------------------------------------
# User errors: one `error: ...` line on stderr and exit code 2 (errors.py); --verbose adds the traceback.

_OVERRIDE = re.compile(r'--?config\.([^=]+)')


def _unknown_config_field(argv: list[str], error: Exception) -> str:
    """'unknown config field config.a.b; did you mean config.a.c?' for the first --config.a.b override whose
    path the config lacks (found by loading the config without the overrides), else the error's own text."""
    paths = [m.group(1) for a in argv[1:] if (m := _OVERRIDE.match(a))]
    saved, sys.argv = sys.argv, [a for a in argv if not _OVERRIDE.match(a)]  # config_flags reads sys.argv
    try:
        FLAGS(sys.argv)
        config = FLAGS.config
    except Exception:  # noqa: BLE001 - fall back to ml_collections' own text below
        config = None
    finally:
        sys.argv = saved
    for path in paths if config is not None else []:
        node, parts = config, path.split('.')
        for i, key in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict):
                break
            if key not in node:
                prefix = '.'.join(['config', *parts[:i]])
                close = difflib.get_close_matches(key, list(node.keys()), n=1)
                keys = list(node.keys())
                listed = ', '.join(keys[:12]) + (', ...' if len(keys) > 12 else '')
                hint = f'; did you mean {prefix}.{close[0]}?' if close else f' ({prefix} has {listed})'
                return f'unknown config field {prefix}.{key}{hint}'
            node = node[key]
    text = str(error.args[0] if error.args else error).replace('\n', ' ').strip('\'"')
    return f'bad config override: {text}'


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, but an unknown flag, a bad flag value or an unknown config field ends the run with
    one `error:` line and exit code 2 instead of a traceback."""
    verbose = errors.show_traceback(argv)
    try:
        return FLAGS(argv)
    except flags.Error as e:  # unknown flag, bad value, a config file that fails to load (last line: its error)
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        errors.report_and_exit(e, verbose=verbose, message=lines[-1] if lines else repr(e))
    except (AttributeError, KeyError) as e:  # ml_collections: an override of a field the config does not have
        errors.report_and_exit(e, verbose=verbose, message=_unknown_config_field(argv, e))
    raise AssertionError('unreachable')


def _run(argv: list[str]) -> None:
    """`main`, with a UserError shown as one line and exit code 2 (the traceback only with --verbose)."""
    try:
        main(argv)
    except errors.UserError as e:
        errors.report_and_exit(e, verbose=FLAGS.verbose or errors.show_traceback())
    except Exception as e:
        if supervise.is_child() and supervise.is_peer_failure(e):  # the supervisor names the lost peer
            supervise.await_verdict(e, FLAGS.heartbeat_timeout_seconds)
        raise


if __name__ == '__main__':
    app.run(_run, flags_parser=_parse_flags)
