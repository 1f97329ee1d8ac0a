"""Command line: `python -m yolo_jax.main --config=configs/mnist.py --workdir=DIR [--mode=train]`.

Declares its flags and hands off; every behaviour lives in the module for its mode, and the command-line front
(cli.py: --config, --verbose, user errors as one `error:` line) is shared with the other programs. Any config field
can be overridden, e.g. `--config.train.epochs=5 --config.model.input_size=320`.
"""

import logging as pylogging
import os
import sys

from absl import flags, logging

from yolo_jax import cli, cpu_env, supervise
from yolo_jax.errors import FlagError

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and metrics.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'detect'], 'What to run.')
flags.DEFINE_string('images', None, 'detect: an image file, a directory or a glob.')
flags.DEFINE_string('video', None, 'detect: a video file or camera index (a video path also works as --images).')
flags.DEFINE_string('output', None, 'detect/eval: where to write results (default: WORKDIR/<mode>).')
flags.DEFINE_bool('track', False, 'detect: track objects across the frames of a video, camera or image folder (in '
                  'name order): ids in the video and JSON lines, tracks.txt (MOTChallenge); config.track thresholds.')
flags.DEFINE_enum('save_format', None, ['voc_xml', 'yolo_txt', 'coco_json'], 'detect: also write the detections '
                  '(score > config.eval.score_threshold) as a labelled set for labelling tools, images included, in '
                  'OUTPUT/<format> (data/export_labels.py); still images only.')
flags.DEFINE_enum('tracker', 'bytetrack', ['bytetrack', 'sort'], 'detect --track: the tracker.')
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
flags.mark_flags_as_required(['workdir'])  # --config and --verbose: cli.define_common_flags


class _QuietLibraries:
    """absl log filter: drops INFO chatter of orbax (tens of lines per checkpoint); keeps its warnings, with the
    traceback of an error a lost peer caused cut to one line (supervise.shorten_peer_failure)."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        if 'orbax' not in record.pathname:
            return True
        supervise.shorten_peer_failure(record)
        return record.levelno >= pylogging.WARNING


def main() -> None:
    if FLAGS.mode == 'detect' and not (FLAGS.video or FLAGS.images):  # before the restart and the imports
        raise FlagError('--mode=detect needs --images=PATH|DIR|GLOB|VIDEO or --video=PATH|CAMERA_INDEX')
    if FLAGS.save_format and FLAGS.mode != 'detect':
        raise FlagError(f'--save_format={FLAGS.save_format} is for --mode=detect')
    if FLAGS.jemalloc:
        cpu_env.exec_with_jemalloc(['-m', 'yolo_jax.main', *sys.argv[1:]])
    if FLAGS.mode == 'train':  # counters in the first second, before TensorFlow and JAX load (train checks again)
        from yolo_jax import config_checks, run_config  # noqa: PLC0415

        config_checks.check_train_config(run_config.complete(FLAGS.config))
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
    tf = cpu_env.import_tensorflow()
    tf.config.set_visible_devices([], 'GPU')
    config = FLAGS.config
    # Before JAX starts its backend; YNN's bfloat16 dots are slower than XLA's, so float32 only.
    cpu_env.set_ynn_dot_flag(FLAGS.xla_cpu_ynn_dot and config.model.dtype == 'float32')
    from yolo_jax import parallel  # noqa: PLC0415  (JAX: after the XLA flags are set)

    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                                    auto=FLAGS.distributed, heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_seconds,
                                    coordinator_timeout_seconds=FLAGS.coordinator_timeout_seconds)
    from yolo_jax import run_config  # noqa: PLC0415

    config = run_config.resolve(config, FLAGS.workdir)  # num_classes=0: from the data; split.json in workdir
    logging.info('Config:\n%s', config)
    try:
        run_mode(config)
    except Exception as e:
        if supervise.is_child() and supervise.is_peer_failure(e):  # the supervisor names the lost peer
            supervise.await_verdict(e, FLAGS.heartbeat_timeout_seconds)
        raise


def run_mode(config) -> None:
    """--mode=train, eval or detect with the resolved config."""
    if FLAGS.mode in ('train', 'eval'):
        cpu_env.import_metric_writers()  # before yolo_jax.train imports clu's writers: no Keras
    if FLAGS.mode == 'train':
        from yolo_jax import train  # noqa: PLC0415

        train.train_and_evaluate(config, FLAGS.workdir)
    elif FLAGS.mode == 'eval':
        from yolo_jax.evaluation import command  # noqa: PLC0415

        command.evaluate_checkpoint(config, FLAGS.workdir, output=FLAGS.output, weights=FLAGS.weights)
    else:
        from yolo_jax import detect  # noqa: PLC0415

        images = FLAGS.video or FLAGS.images  # checked at the top of main
        track = None
        if FLAGS.track:
            from yolo_jax import tracking  # noqa: PLC0415

            track = tracking.TrackParams.from_config(config.track, FLAGS.tracker)
        detect.detect_images(config, FLAGS.workdir, images, output=FLAGS.output, weights=FLAGS.weights, track=track,
                              save_format=FLAGS.save_format)


if __name__ == '__main__':
    # The common flags, every user mistake as one `error:` line and exit code 2; eval and detect of a workdir
    # default to its own config (WORKDIR/config.py).
    cli.run(main, training_modes=('train',))
