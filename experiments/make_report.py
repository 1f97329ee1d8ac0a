"""Figures for a finished run: training curves from metrics.jsonl and a grid of test images with detections.

    python experiments/make_report.py --config=configs/mnist.py:quick --workdir=DIR --out=experiments/NAME

Writes OUT/curves.png (train and validation losses, learning rate, mAP) and OUT/detections.png (the first test
images with the best checkpoint's detections, score > config.eval.score_threshold). Run `--mode=eval` for the
per-class mAP table (it writes DIR/eval/metrics.json).
"""

import json
import sys
from pathlib import Path

from absl import flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from yolo_jax import cli  # noqa: E402  (after the repository is on the path)

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'The run\'s workdir.')
flags.DEFINE_string('out', None, 'Output directory for the figures.')
flags.DEFINE_integer('num_images', 12, 'Test images in the detection grid.')
flags.mark_flags_as_required(['workdir', 'out'])  # --config: cli.run


def plot_curves(metrics_path: Path, out: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # noqa: PLC0415

    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    by_kind: dict[str, dict[int, dict]] = {}
    for r in records:  # a resumed run appends: the last record of a step wins
        by_kind.setdefault(r['kind'], {})[r['step']] = r
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for kind, style in (('train', '-'), ('val', 'o-')):
        rows = [by_kind.get(kind, {})[s] for s in sorted(by_kind.get(kind, {}))]
        for comp in ('giou', 'conf', 'prob', 'total'):
            if rows:
                axes[0].plot([r['step'] for r in rows], [r[comp] for r in rows], style, label=f'{kind} {comp}',
                             markersize=3, alpha=0.8 if kind == 'train' else 1.0)
    axes[0].set_yscale('log')
    axes[0].set_xlabel('step')
    axes[0].set_title('losses (train: logged steps; val: per epoch)')
    axes[0].legend(fontsize=7, ncol=2)
    train = [by_kind['train'][s] for s in sorted(by_kind.get('train', {}))]
    axes[1].plot([r['step'] for r in train], [r['lr'] for r in train])
    axes[1].set_title('learning rate')
    axes[1].set_xlabel('step')
    maps = [by_kind['map'][s] for s in sorted(by_kind.get('map', {}))]
    for key, label in (('map50', 'VOC mAP@0.5'), ('coco_map', 'COCO mAP@[.5:.95]')):
        axes[2].plot([r['step'] for r in maps], [r.get(key, float('nan')) for r in maps], 'o-', label=label)
    axes[2].set_ylim(0, 1)
    axes[2].set_title('test-split mAP')
    axes[2].set_xlabel('step')
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def detection_grid(config, workdir: str, out: Path, num_images: int) -> None:
    import jax  # noqa: PLC0415

    from yolo_jax import inference, input_pipeline, visualize  # noqa: PLC0415
    from yolo_jax.data.letterbox import letterbox_boxes  # noqa: PLC0415
    from yolo_jax.postprocess import postprocess_config  # noqa: PLC0415

    model, variables, spec = inference.load_detector(config, workdir, fold=config.eval.fold_batchnorm)
    cfg = postprocess_config(config, spec)
    tiles = []
    for batch in input_pipeline.Data(config).eval_batches(config.train.eval_batch_size):
        det = jax.device_get(inference.predict(model, variables, batch['image'], batch['orig_size'], cfg))
        for i in range(len(batch['image'])):
            if len(tiles) < num_images and batch['valid'][i] > 0:
                keep, (h, w) = det.valid[i], batch['orig_size'][i]
                # The eval images are letterboxed inputs; map the detections (original pixels) onto them.
                boxes = letterbox_boxes(det.boxes[i][keep], int(h), int(w), config.model.input_size, config.data.resize)
                tiles.append(visualize.draw_detections(batch['image'][i], boxes, det.classes[i][keep],
                                                       det.scores[i][keep], spec.class_names))
        if len(tiles) >= num_images:
            break
    from PIL import Image  # noqa: PLC0415

    Image.fromarray(visualize.grid(tiles, ncols=4, pad=4, pad_value=160)).save(out)


def main() -> None:
    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(Path(FLAGS.workdir) / 'metrics.jsonl', out / 'curves.png')
    detection_grid(FLAGS.config, FLAGS.workdir, out / 'detections.png', FLAGS.num_images)
    print(f'wrote {out / "curves.png"} and {out / "detections.png"}')


if __name__ == '__main__':
    cli.run(main)
