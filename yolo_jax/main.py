"""Command line: `python -m yolo_jax.main --config=configs/mnist.py --workdir=DIR [--mode=train]`.

Parses flags and hands off; every behaviour lives in the module for its mode. Any config field can be
overridden, e.g. `--config.train.epochs=5 --config.model.input_size=320`.
"""

import logging as pylogging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from yolo_jax import cpu_env

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
flags.DEFINE_bool('jemalloc', True, 'Restart under jemalloc (if installed: apt-get install libjemalloc2), '
                  'keeping freed memory: measured faster and steadier CPU steps (README, benchmarks).')
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
    logging.get_absl_logger().addFilter(_QuietLibraries())  # orbax logs through absl's logger
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    # TF only feeds the input pipeline: keep it off the accelerators that JAX uses.
    import tensorflow as tf  # noqa: PLC0415

    tf.config.set_visible_devices([], 'GPU')
    config = FLAGS.config
    # Before JAX starts its backend; YNN's bfloat16 dots are slower than XLA's, so float32 only.
    cpu_env.set_ynn_dot_flag(FLAGS.xla_cpu_ynn_dot and config.model.dtype == 'float32')
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


if __name__ == '__main__':
    app.run(main)
