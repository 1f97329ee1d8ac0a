"""A probe, not a feature yet: test-time scales (with or without config.eval.tta's flips) on a finished run.

    python experiments/bccd/tta_scales.py --workdir=W --sizes=576 --flips=hflip,vflip,hvflip [--nms=nms]

Evaluates W's best checkpoint as `--mode=eval` does (same data, thresholds, NMS, metrics) with the network also
run on the letterboxed batch resized to each of --sizes (bilinear): each size's decoded candidates are scaled back
to the input's pixels (x S / s; the letterbox maps uniformly) and pooled, with the flipped views', before the NMS.
It swaps `inference.make_predict_fn` for that function in this process only, so nothing else changes. Prints one
line of VOC mAP@0.5 / COCO AP and writes --output (default W/eval_scales). BCCD row 12 (experiments/bccd/README.md).
"""

import argparse
import functools
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from yolo_jax import cpu_env  # noqa: E402

cpu_env.import_tensorflow().config.set_visible_devices([], 'GPU')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from yolo_jax import inference, run_config  # noqa: E402
from yolo_jax import postprocess as pp  # noqa: E402
from yolo_jax.evaluation import command  # noqa: E402


def multi_size_predict_fn(sizes: tuple[int, ...]):
    """A `make_predict_fn` replacement: the input size plus `sizes`, each with cfg.tta's flips, pooled."""

    def make(model, cfg: pp.PostprocessConfig):
        def fn(variables, images, resize, orig_sizes):  # images (B, S, S, 3) in [0, 1]
            size, pooled = cfg.input_size, []
            for s in (size, *sizes):
                x = images if s == size else jax.image.resize(images, (images.shape[0], s, s, 3), 'bilinear')
                pred = pp.view_candidates(model.apply(variables, pp.tta_images(x, cfg), train=False), cfg, s)
                pooled.append(pred.at[..., :4].multiply(size / s))  # xywh in s pixels → input pixels
            return pp.postprocess_decoded(jnp.concatenate(pooled, axis=1), resize, orig_sizes, cfg)

        return jax.jit(fn)

    return functools.lru_cache(maxsize=8)(make)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--workdir', required=True)
    p.add_argument('--sizes', default='576', help='extra input sizes, comma-separated (multiples of 32)')
    p.add_argument('--flips', default='', help="config.eval.tta names, comma-separated (e.g. 'hflip,vflip,hvflip')")
    p.add_argument('--nms', default='nms', choices=('nms', 'soft_nms'))
    p.add_argument('--output', default=None)
    args = p.parse_args()
    spec = importlib.util.spec_from_file_location('run_config_file', run_config.path(args.workdir))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = run_config.resolve(module.get_config(), args.workdir)
    config.eval.tta = tuple(n for n in args.flips.split(',') if n)
    config.eval.nms_method = args.nms
    sizes = tuple(int(s) for s in args.sizes.split(',') if s)
    inference.make_predict_fn = multi_size_predict_fn(sizes)
    metrics = command.evaluate_checkpoint(config, args.workdir,
                                          output=args.output or str(Path(args.workdir) / 'eval_scales'))
    print(f'sizes {sizes} flips {config.eval.tta} {args.nms}: VOC mAP@0.5 {metrics["map50"]:.4f}, '
          f'COCO AP {metrics["coco_map"]:.4f}')


if __name__ == '__main__':
    main()
