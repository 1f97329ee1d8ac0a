# %% [markdown]
# # Debugging the YOLOv3 loss on a real batch
#
# This notebook takes **one batch** of the MNIST detection pipeline and opens up the loss of
# `yolo_jax/loss.py` on it:
#
# 1. the batch, its ground truth and the **encoded targets**: which scale, cell and anchor is responsible
#    for each box, and which background cells the IoU threshold **ignores**;
# 2. the model's raw outputs **decoded** (the top-scoring candidates drawn on the image);
# 3. the loss split **by scale and component** (giou / conf / prob) as a table, and **per-cell heatmaps** from
#    `loss.loss_maps`;
# 4. **gradient norms per layer group** (Darknet53 stages, neck, output convolutions);
# 5. the effect of one knob at a time, **re-jitted in place**: the ignore threshold (a static value of the
#    compiled loss: a new value recompiles) and the label smoothing (re-encoded targets: same shapes, no
#    recompile).
#
# It works on a random initialisation (default) and on a trained checkpoint. Everything is set by environment
# variables, so the same file runs in Jupyter, as a script and in CI (`tests/test_notebooks.py` runs it top to
# bottom with `MPLBACKEND=Agg`):
#
# | variable | default | meaning |
# |---|---|---|
# | `YOLO_WORKDIR` | `''` | a training workdir: use its best checkpoint (`inference.load_variables`), no random init |
# | `YOLO_CONFIG` | `small` | variants of `configs/mnist.py` (comma-separated); must match the workdir's run |
# | `YOLO_DATA_DIR` | `''` | TFDS data dir for the generated MNIST set (`''` = `~/tensorflow_datasets`) |
# | `YOLO_DIGIT_SOURCE` | `sklearn` (random init) / `auto` (workdir) | `config.data.digit_source` |
# | `YOLO_TRAIN_STEPS` | `20` | random init only: Adam steps on this batch first, so the maps are not all uniform |
# | `YOLO_FIGURES` | `''` | a directory: save the main figures there as PNG |
#
# The notebook asserts the loss's invariants as it goes (the per-cell maps add up to the reported components,
# ignored cells carry no confidence loss, ...), so a CI run is a real check, not just a smoke test.
#
# `experiments/loss_debugging.ipynb` is generated from this file: edit the `.py` and run
# `python experiments/sync_notebooks.py` (or pair the two with jupytext).

# %%
import dataclasses
import functools
import importlib.util
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import tensorflow as tf
from matplotlib.patches import Rectangle

from yolo_jax import decode as decode_lib
from yolo_jax import inference, input_pipeline, transfer, visualize
from yolo_jax import loss as loss_lib
from yolo_jax.data import targets as targets_lib
from yolo_jax.models import create_model

IN_NOTEBOOK = 'ipykernel' in sys.modules
if not IN_NOTEBOOK:
    plt.switch_backend('Agg')  # headless: figures are only saved (YOLO_FIGURES), never shown
tf.config.set_visible_devices([], 'GPU')  # TF only feeds the pipeline; JAX owns any accelerator
START = time.perf_counter()
print('jax', jax.__version__, 'on', jax.devices())

# %% [markdown]
# ## Parameters
#
# `BN_MODE` decides which BatchNorm statistics the forward pass uses: `'batch'` normalises with this batch's
# statistics, exactly what `steps.train_step` differentiates; `'running'` uses the running averages, what
# validation (`eval_step`) and inference see. A random init has meaningless running averages (mean 0, variance 1:
# with Keras' 0.01-std kernels the activations would vanish layer after layer), so it defaults to `'batch'`; a
# checkpoint defaults to `'running'`.

# %%
WORKDIR = os.environ.get('YOLO_WORKDIR', '')
CONFIG_VARIANT = os.environ.get('YOLO_CONFIG', 'small')
DATA_DIR = os.environ.get('YOLO_DATA_DIR', '')
DIGIT_SOURCE = os.environ.get('YOLO_DIGIT_SOURCE', 'auto' if WORKDIR else 'sklearn')
TRAIN_STEPS = 0 if WORKDIR else int(os.environ.get('YOLO_TRAIN_STEPS', '20'))
FIG_DIR = os.environ.get('YOLO_FIGURES', '')

BN_MODE = 'running' if WORKDIR else 'batch'
SPLIT = 'train'  # 'train': augmented, as the training loss sees it; 'test': the validation pipeline
BATCH_SIZE = 4
IMAGE = 0  # the image of the batch the per-cell figures show
SHOW = 2  # images drawn in the overview figures
TOP_K = 8  # decoded candidates drawn per image


def show(fig, name: str) -> None:
    """Saves `fig` as FIG_DIR/name.png when YOLO_FIGURES is set; outside Jupyter closes it (frees memory)."""
    if FIG_DIR:
        Path(FIG_DIR).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(FIG_DIR) / f'{name}.png', dpi=110, bbox_inches='tight')
    if not IN_NOTEBOOK:
        plt.close(fig)


def elapsed() -> str:
    return f'{time.perf_counter() - START:.1f} s since start'


# %% [markdown]
# ## Config
#
# `configs/mnist.py` with the `small` variant: YOLOv3 at a quarter of its width, 256 px input, so grids of
# 32, 16 and 8 cells at strides 8, 16, 32. Only 16 train / 8 test images are generated (offline, from the
# bundled scikit-learn digits unless a workdir asks for its own digits): image *i* of the generator does not
# depend on how many are generated, so these are the first images of the full set.

# %%
REPO = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / 'configs' / 'mnist.py').is_file())
_spec = importlib.util.spec_from_file_location('mnist_config', REPO / 'configs' / 'mnist.py')
mnist_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mnist_config)

config = mnist_config.get_config(CONFIG_VARIANT)
config.data.num_train = 16
config.data.num_test = 8
config.data.shuffle_buffer = 16
config.data.digit_source = DIGIT_SOURCE
config.data.data_dir = DATA_DIR

data = input_pipeline.Data(config)  # builds the small MNIST set once, then reads it
SPEC = data.spec  # the detection problem: input size, strides, anchors, class names
LOSS_KW = loss_lib.loss_kwargs(SPEC, config.loss)
STRIDES = LOSS_KW['strides']
ANCHORS = np.asarray(LOSS_KW['anchors'], np.float32)  # (L, A, 2) pixels
SIZE = int(config.model.input_size)
NUM_CLASSES = int(config.model.num_classes)
GRIDS = [SIZE // s for s in STRIDES]
NAMES = SPEC.class_names
print(f'{config.model.name} width {config.model.width_multiplier}, input {SIZE} px, strides {STRIDES}, '
      f'grids {GRIDS}, {len(ANCHORS[0])} anchors per scale')
print(f'ignore_thresh {config.loss.ignore_thresh}, label_smoothing {config.data.label_smoothing}, '
      f'positive_iou {config.data.positive_iou}')

# %% [markdown]
# ## One batch from the pipeline
#
# The first batch of epoch 0, as `train.train_and_evaluate` would see it (same shuffle, same augmentation).
# `input_pipeline.Data` is the run's data object: `train_epoch(epoch, batch_size)` and `eval_batches(batch_size)`.
# Shapes (B = batch, S_l = grid side of scale l, A = 3 anchors, C = 10 classes, M = `max_bbox_per_scale`):
#
# * `image` (B, 256, 256, 3) in [0, 1];
# * `labels[l]` (B, S_l, S_l, A, 5 + C): at the responsible (row, column, anchor) slots the box's x, y, w, h
#   in **input pixels**, the responsibility 1 and the smoothed one-hot; zeros elsewhere;
# * `bboxes[l]` (B, M, 4): the xywh (pixels) of the boxes assigned to scale l, zero-padded: the list the
#   ignore threshold compares predictions with;
# * `boxes` (B, max_boxes, 4) xyxy pixels and `classes` (B, max_boxes) (-1 = padding): the ground truth itself.

# %%
if SPLIT == 'train':
    batch = next(data.train_epoch(0, BATCH_SIZE).as_numpy_iterator())
else:
    batch = next(data.eval_batches(BATCH_SIZE, SPLIT))
inputs = {k: batch[k] for k in ('image', 'labels', 'bboxes')}  # what the compiled loss consumes

for key in ('image', 'boxes', 'classes'):
    print(f'{key:8s} {batch[key].dtype} {batch[key].shape}')
for stride, label, bboxes in zip(STRIDES, batch['labels'], batch['bboxes'], strict=True):
    print(f'stride {stride:2d}: labels {label.shape}, bboxes {bboxes.shape}; responsible slots per image '
          f'{label[..., 4].sum(axis=(1, 2, 3)).astype(int).tolist()}, listed boxes per image '
          f'{(bboxes[..., 2] > 0).sum(axis=1).tolist()}')
gt_valid = batch['classes'] >= 0
print('ground-truth boxes per image', gt_valid.sum(axis=1).tolist(), '|', elapsed())

# %% [markdown]
# ## Model and variables
#
# With `YOLO_WORKDIR` set, the best checkpoint of that workdir (falling back to the latest) is loaded; the config
# (`YOLO_CONFIG`) must describe the same network. Otherwise the random init a training run with this config starts
# from (`transfer.fresh_variables`: the same seed), which we optionally train for
# `YOLO_TRAIN_STEPS` Adam steps on this very batch: at init every prediction sits at its cell centre with the
# anchor's size and objectness ≈ 0.5, so the confidence map is nearly uniform; a few steps make it show
# structure (the loss falls fast on a single batch: this is overfitting on purpose).

# %%
if WORKDIR:
    model, variables = inference.load_variables(config, WORKDIR, fold=False)
    print('loaded the checkpoint of', WORKDIR)
else:
    model = create_model(config.model)
    variables = transfer.fresh_variables(config, model)
    print(f'random init: the weights of step 0 of a training run with this config (seed {config.train.seed})')
params, batch_stats = variables['params'], variables['batch_stats']
print(f'{sum(x.size for x in jax.tree.leaves(params)):,} parameters | {elapsed()}')


@functools.partial(jax.jit, static_argnames='train')
def loss_and_grads(params, batch_stats, inputs, train: bool):
    """Forward + `yolo_loss` + gradient, as `steps.train_step` computes them (without the optimizer).

    Returns (metrics {'giou', 'conf', 'prob', 'total'} batch means, raw outputs per scale (B, S, S, A*(5+C)),
    updated batch_stats, gradients (a params-shaped tree)).
    """

    def loss_fn(p):
        v = {'params': p, 'batch_stats': batch_stats}
        if train:
            outputs, updates = model.apply(v, inputs['image'], train=True, mutable=['batch_stats'])
            new_stats = updates['batch_stats']
        else:
            outputs, new_stats = model.apply(v, inputs['image'], train=False), batch_stats
        total, metrics = loss_lib.yolo_loss(outputs, inputs['labels'], inputs['bboxes'], **LOSS_KW)
        return total, (metrics, outputs, new_stats)

    (_, (metrics, outputs, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return metrics, outputs, new_stats, grads


TRAIN_BN = BN_MODE == 'batch'
t0 = time.perf_counter()
result = jax.block_until_ready(loss_and_grads(params, batch_stats, inputs, TRAIN_BN))
print(f'compile + first forward/backward: {time.perf_counter() - t0:.1f} s')
print('loss at the start:', {k: round(float(v), 3) for k, v in result[0].items()})

# %% [markdown]
# ### Optional: a few Adam steps on this batch (random init only)
#
# Constant learning rate 1e-3 (the `small` config's peak), reusing the compiled `loss_and_grads` (no second
# compile of the network); `batch_stats` are updated as in training.

# %%
history = [float(result[0]['total'])]
if TRAIN_STEPS:
    tx = optax.adam(1e-3, eps=config.train.adam_eps)
    opt_state = tx.init(params)

    @jax.jit
    def apply_updates(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    t0 = time.perf_counter()
    for _ in range(TRAIN_STEPS):
        _, _, new_stats, step_grads = result
        params, opt_state = apply_updates(params, opt_state, step_grads)
        batch_stats = new_stats if TRAIN_BN else batch_stats
        result = loss_and_grads(params, batch_stats, inputs, TRAIN_BN)
        history.append(float(result[0]['total']))
    print(f'{TRAIN_STEPS} steps in {time.perf_counter() - t0:.1f} s; total loss at each step:',
          ' → '.join(f'{v:.1f}' for v in history))
    assert history[-1] < history[0], 'a few Adam steps on a single batch should lower its loss'

metrics, outputs, _, grads = result
metrics = {k: float(v) for k, v in metrics.items()}
outputs = [np.asarray(o) for o in outputs]
assert all(np.isfinite(v) for v in metrics.values()), metrics
print('loss analysed below:', {k: round(v, 3) for k, v in metrics.items()}, '|', elapsed())

# %% [markdown]
# ## Per-cell loss maps
#
# `loss.loss_maps` returns, per scale, (B, S, S, A) maps of the three terms and of the background predictions
# the threshold ignores:
#
# * **giou** = respond · (2 − w·h / 256²) · (1 − GIoU(pred, gt)): only at responsible slots, larger for small boxes;
# * **conf** = (respond − σ(t_conf))² · (respond + bgd) · BCE: responsible slots and *background* slots, where
#   bgd = 1 − respond unless the prediction overlaps a ground truth of this scale's list by IoU ≥ `ignore_thresh`;
# * **prob** = respond · Σ_c BCE(smoothed one-hot, t_prob): only at responsible slots;
# * **ignored** = 1 at the background slots that the threshold exempts from the conf loss.
#
# The loss is computed here by a second, loss-only jitted function of the raw outputs, with `ignore_thresh` a
# **static** argument (a Python float baked into the program, as `train.py` binds it with `functools.partial`).
# `TRACES` records each trace: Python in a jitted function runs only while JAX traces it, i.e. once per new
# static value or input shape. We use it in the knob section below.

# %%
TRACES = []


@functools.partial(jax.jit, static_argnames='ignore_thresh')
def loss_from_outputs(outputs, labels, bboxes, ignore_thresh: float):
    """(batch-mean components {'giou', 'conf', 'prob', 'total'}, per-scale maps) for fixed raw outputs."""
    TRACES.append(ignore_thresh)  # side effect at trace time only
    kw = dict(LOSS_KW, ignore_thresh=ignore_thresh)
    maps = loss_lib.loss_maps(outputs, labels, bboxes, **kw)
    components = {k: jnp.mean(v) for k, v in loss_lib.per_example_losses(maps).items()}
    return components, maps


IGNORE = LOSS_KW['ignore_thresh']
components, maps = loss_from_outputs(outputs, inputs['labels'], inputs['bboxes'], IGNORE)
components = {k: float(v) for k, v in components.items()}
maps = jax.tree.map(np.asarray, maps)
labels = [np.asarray(x) for x in batch['labels']]
respond = [lab[..., 4] for lab in labels]

# Invariants: the maps add up to the components that yolo_loss reported inside the training program ...
for k in (*loss_lib.COMPONENTS, 'total'):
    np.testing.assert_allclose(components[k], metrics[k], rtol=1e-4, err_msg=k)
for k in loss_lib.COMPONENTS:
    total_from_maps = sum(m[k].sum(axis=(1, 2, 3)) for m in maps).mean()
    np.testing.assert_allclose(total_from_maps, metrics[k], rtol=1e-4, err_msg=k)
for m, r in zip(maps, respond, strict=True):
    assert np.all(m['giou'] >= 0) and np.all(m['conf'] >= 0) and np.all(m['prob'] >= 0)
    assert np.all(m['giou'][r == 0] == 0) and np.all(m['prob'][r == 0] == 0)  # box/class terms only where responsible
    assert np.all(m['ignored'][r == 1] == 0)  # a responsible slot is never ignored
    assert np.all(m['conf'][m['ignored'] == 1] == 0)  # ... and an ignored one has no conf loss
print('per-cell maps agree with yolo_loss; ignored cells carry no conf loss')

# %% [markdown]
# ## Ground truth and encoded targets
#
# Per scale (columns) and image (rows): the ground-truth boxes (solid, class colour), the **responsible cells**
# with their **anchor boxes** centred on the cell (dashed; a responsible cell is split in three vertical strips,
# one per anchor, filled for each responsible anchor), and the cells where the threshold **ignores** at least one
# background anchor (hatched purple). The encoder makes
# every anchor whose IoU with the box (both centred on the box's cell) exceeds `positive_iou` = 0.3 responsible,
# at any scale; a box without one takes its single best anchor. Small digits land on stride 8, big ones on 32.

# %%
ANCHOR_COLORS = ('tab:blue', 'tab:orange', 'tab:green')


def rgb(class_id: int) -> tuple[float, float, float]:
    return tuple(c / 255 for c in visualize.class_color(int(class_id)))


def draw_ground_truth(ax, b: int) -> None:
    for box, cls in zip(batch['boxes'][b][gt_valid[b]], batch['classes'][b][gt_valid[b]], strict=True):
        x1, y1, x2, y2 = box
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=rgb(cls), lw=1.5))
        ax.text(x1, y1, NAMES[cls], color='white', fontsize=7, va='bottom', bbox=dict(fc=rgb(cls), lw=0, pad=1))


def responsible_slots(level: int, b: int) -> np.ndarray:
    """(K, 3) int (row, column, anchor) of the responsible slots of image b at scale `level`."""
    return np.argwhere(respond[level][b] > 0)


fig, axes = plt.subplots(SHOW, len(STRIDES), figsize=(4.3 * len(STRIDES), 4.3 * SHOW), squeeze=False)
for b in range(SHOW):
    for level, stride in enumerate(STRIDES):
        ax = axes[b, level]
        ax.imshow(batch['image'][b], extent=(0, SIZE, SIZE, 0))
        ignored = maps[level]['ignored'][b].sum(axis=-1)  # (S, S): ignored anchors per cell
        for row, col in np.argwhere(ignored > 0):
            ax.add_patch(Rectangle((col * stride, row * stride), stride, stride, fill=False, hatch='////', lw=0.5,
                                   edgecolor='purple'))
        draw_ground_truth(ax, b)
        slots = responsible_slots(level, b)
        strip = stride / len(ANCHORS[level])
        for row, col, a in slots:
            ax.add_patch(Rectangle((col * stride + a * strip, row * stride), strip, stride, color=ANCHOR_COLORS[a],
                                   alpha=0.7))
            aw, ah = ANCHORS[level][a]
            cx, cy = (col + 0.5) * stride, (row + 0.5) * stride
            ax.add_patch(Rectangle((cx - aw / 2, cy - ah / 2), aw, ah, fill=False, ls='--', lw=1,
                                   edgecolor=ANCHOR_COLORS[a]))
        ax.set_xlim(0, SIZE)
        ax.set_ylim(SIZE, 0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f'image {b}, stride {stride} ({GRIDS[level]}×{GRIDS[level]}): {len(slots)} responsible, '
                     f'{int(ignored.sum())} ignored', fontsize=9)
handles = [Rectangle((0, 0), 1, 1, color=c, alpha=0.7) for c in ANCHOR_COLORS]
handles.append(Rectangle((0, 0), 1, 1, fill=False, hatch='////', edgecolor='purple', lw=0.5))
fig.legend(handles, [*(f'anchor {a} responsible' for a in range(len(ANCHOR_COLORS))), 'ignored background'],
           loc='lower center', ncol=4)
fig.suptitle('Targets: ground truth, responsible cells + their anchors (dashed), ignored background (hatched)')
fig.tight_layout(rect=(0, 0.03, 1, 1))
show(fig, 'targets')

# %% [markdown]
# The same assignment as text, for image `IMAGE`: each ground-truth box and the slots holding it. A box can lose
# a slot to a later box that claims the same (cell, anchor) (the reference's "later box wins"); a box without
# any slot left is reported.

# %%
print(f'image {IMAGE}: ground truth (class, centre x, y, size w×h px) → responsible (stride, row, col, anchor)')
for box, cls in zip(batch['boxes'][IMAGE][gt_valid[IMAGE]], batch['classes'][IMAGE][gt_valid[IMAGE]], strict=True):
    xywh = np.concatenate([(box[:2] + box[2:]) / 2, box[2:] - box[:2]])
    found = [
        (stride, int(row), int(col), int(a))
        for level, stride in enumerate(STRIDES)
        for row, col, a in responsible_slots(level, IMAGE)
        if np.allclose(labels[level][IMAGE, row, col, a, :4], xywh, atol=1e-3)
    ]
    print(f'  {NAMES[cls]}  ({xywh[0]:6.1f}, {xywh[1]:6.1f}) {xywh[2]:5.1f}×{xywh[3]:5.1f} → '
          f'{found if found else "NO SLOT (overwritten by a later box)"}')
    for stride, row, col, a in found:  # the slot's smoothed one-hot peaks at the box's class
        assert labels[STRIDES.index(stride)][IMAGE, row, col, a, 5:].argmax() == cls, (stride, row, col, a)

# %% [markdown]
# ## Decoded predictions
#
# `decode.decode_all` turns each raw map into (B, S, S, A, 5 + C): centre xy = (σ(t_xy) + cell) · stride and
# size wh = exp(t_wh) · anchor in input pixels, objectness and class probabilities as sigmoids. Below, the
# `TOP_K` candidates by score = objectness · max class probability, over all scales, **before** any threshold or
# NMS (what the loss sees; `inference.predict` gives the post-processed detections), labelled
# `class@stride score`.

# %%
decoded = [np.asarray(d) for d in decode_lib.decode_all(outputs, LOSS_KW['anchors'], STRIDES, LOSS_KW['scale_xy'])]


def top_candidates(b: int, k: int) -> list[dict]:
    rows = []
    for level, d in enumerate(decoded):
        scores = d[b, ..., 4] * d[b, ..., 5:].max(axis=-1)  # (S, S, A)
        for idx in np.argsort(scores, axis=None)[::-1][:k]:
            row, col, a = np.unravel_index(idx, scores.shape)
            x, y, w, h = d[b, row, col, a, :4]
            rows.append(dict(
                stride=STRIDES[level], cell=(int(row), int(col)), anchor=int(a), score=float(scores[row, col, a]),
                conf=float(d[b, row, col, a, 4]), cls=int(d[b, row, col, a, 5:].argmax()),
                box=np.array([x - w / 2, y - h / 2, x + w / 2, y + h / 2]),
                respond=bool(respond[level][b, row, col, a]),
            ))
    return sorted(rows, key=lambda r: -r['score'])[:k]


UP = 2  # draw on a 2x upscaled image so the labels stay legible
fig, axes = plt.subplots(2, SHOW, figsize=(5 * SHOW, 10), squeeze=False)
for b in range(SHOW):
    image = np.repeat(np.repeat(visualize.to_uint8(batch['image'][b]), UP, axis=0), UP, axis=1)
    gt = visualize.draw_detections(image, batch['boxes'][b][gt_valid[b]] * UP, batch['classes'][b][gt_valid[b]],
                                   class_names=NAMES)
    top = top_candidates(b, TOP_K)
    pred = visualize.draw_detections(image, np.array([r['box'] for r in top]) * UP, np.arange(len(top)),
                                     np.array([r['score'] for r in top]),
                                     [f'{NAMES[r["cls"]]}@{r["stride"]}' for r in top])
    for ax, im, title in ((axes[0, b], gt, f'image {b}: ground truth'), (axes[1, b], pred, f'top {TOP_K} candidates')):
        ax.imshow(im)
        ax.set_title(title)
        ax.axis('off')
fig.tight_layout()
show(fig, 'predictions')

print(f'image {IMAGE}: stride  cell      anchor  class  objectness  score  responsible')
for r in top_candidates(IMAGE, TOP_K):
    print(f'          {r["stride"]:4d}  {str(r["cell"]):9s} {r["anchor"]:4d}  {NAMES[r["cls"]]:>5s}  '
          f'{r["conf"]:10.3f}  {r["score"]:5.3f}  {r["respond"]}')

# %% [markdown]
# ## The loss by scale and component
#
# Batch means (the loss is summed over cells, anchors and classes, averaged over the batch and summed over scales),
# with the number of responsible and ignored slots per image. At a random init conf dominates: each of the
# 3·(32² + 16² + 8²) = 4032 background slots of a 256 px image pays (0 − 0.5)² · log 2 ≈ 0.17, about 700 per image,
# and the first updates mostly push the objectness of the background down (the loss history above).

# %%
print(f'{"scale":>14s} {"giou":>8s} {"conf":>8s} {"prob":>8s} {"total":>8s} {"resp/img":>9s} {"ignored/img":>12s}')
table = {}
for level, (stride, m) in enumerate(zip(STRIDES, maps, strict=True)):
    row = {k: float(m[k].sum(axis=(1, 2, 3)).mean()) for k in loss_lib.COMPONENTS}
    row['total'] = sum(row.values())
    table[stride] = row
    values = ' '.join(f'{row[k]:8.3f}' for k in (*loss_lib.COMPONENTS, 'total'))
    print(f'{f"stride {stride} ({GRIDS[level]}²)":>14s} {values} {respond[level].sum() / BATCH_SIZE:9.1f} '
          f'{m["ignored"].sum() / BATCH_SIZE:12.1f}')
print(f'{"all scales":>14s} ' + ' '.join(f'{components[k]:8.3f}' for k in (*loss_lib.COMPONENTS, 'total')))
for k in (*loss_lib.COMPONENTS, 'total'):
    np.testing.assert_allclose(sum(r[k] for r in table.values()), components[k], rtol=1e-4)

# %% [markdown]
# ## Per-cell heatmaps
#
# For image `IMAGE`: each component summed over the 3 anchors, one row per scale, drawn over the (faded) image on
# the scale's grid (a stride-8 cell is 8×8 input pixels). Each panel has its own colour scale; the title gives
# the panel's sum (this image's contribution to the component, before the batch mean). The last column counts
# ignored anchors per cell.

# %%
columns = (*loss_lib.COMPONENTS, 'ignored')
fig, axes = plt.subplots(len(STRIDES), len(columns), figsize=(4.2 * len(columns), 3.6 * len(STRIDES)),
                         squeeze=False)
for level, stride in enumerate(STRIDES):
    for j, key in enumerate(columns):
        ax = axes[level, j]
        heat = maps[level][key][IMAGE].sum(axis=-1)  # (S, S)
        ax.imshow(batch['image'][IMAGE], extent=(0, SIZE, SIZE, 0), alpha=0.35)
        vmax = len(ANCHORS[level]) if key == 'ignored' else max(float(heat.max()), 1e-6)
        im = ax.imshow(heat, cmap='Purples' if key == 'ignored' else 'inferno', alpha=0.75,
                       extent=(0, SIZE, SIZE, 0), interpolation='nearest', vmin=0, vmax=vmax)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        ax.set_xticks([])
        ax.set_yticks([])
        total = f'{int(heat.sum())} slots' if key == 'ignored' else f'sum {heat.sum():.2f}'
        ax.set_title(f'{key}, stride {stride}: {total}', fontsize=10)
fig.suptitle(f'Per-cell loss maps of image {IMAGE} (summed over anchors)')
fig.tight_layout()
show(fig, 'heatmaps')

# %% [markdown]
# ## Gradient norms per layer group
#
# The gradient of the batch loss with respect to every parameter (from `loss_and_grads`, the same computation as
# a training step), grouped by where the convolution sits. Convolutions are named `conv_NNN` by their position in
# Darknet's cfg: in the backbone, `conv_000` is the stem and the five Darknet53 stages (a stride-2 conv then
# 1/2/8/8/4 residual blocks of two convs) follow; in the head, the convs that lead to each output (`neck→/32`
# etc., including the 1×1 conv before each upsampling, which feeds the next scale) and the three linear output
# convolutions (`out/32` = `conv_058`, `out/16` = `conv_066`, `out/8` = `conv_074` in YOLOv3). Each conv's norm
# covers its kernel and BatchNorm scale and bias (kernel and bias for the output convs). Left: L2 norm per group,
# and the ratio ‖grad‖ / ‖param‖ (how large a plain SGD step is relative to the weights). Right: every conv in
# Darknet order.

# %%
DARKNET53_REPEATS = (1, 2, 8, 8, 4)  # CSPDarknet53 (YOLOv4) has the same stages, each with 5 + 2 * repeats convs


def layer_groups(params, model) -> dict[str, list[str]]:
    """{group name: ['backbone/conv_NNN', ...]}, in data-flow order."""
    groups: dict[str, list[str]] = {}
    staged = config.model.name in ('yolov3', 'yolov4')
    if staged:
        bounds, start = [('stem', 0, 1)], 1
        for i, repeats in enumerate(DARKNET53_REPEATS):
            end = start + (1 if config.model.name == 'yolov3' else 5) + 2 * repeats
            bounds.append((f'stage {i + 1} (/{2 ** (i + 1)})', start, end))
            start = end
    for name in sorted(params['backbone']):
        index = int(name.split('_')[1])
        if staged:
            group = next(g for g, lo, hi in bounds if lo <= index < hi)
        else:  # the tiny networks: each backbone conv on its own
            group = name
        groups.setdefault(f'backbone {group}', []).append(f'backbone/{name}')
    output_stride = dict(zip(model.output_convs, reversed(STRIDES), strict=True))  # Darknet lists large objects first
    pending = []
    for name in sorted(params['head']):
        if name in output_stride:
            groups[f'neck→/{output_stride[name]}'] = [f'head/{n}' for n in pending]
            groups[f'out/{output_stride[name]}'] = [f'head/{name}']
            pending = []
        else:
            pending.append(name)
    assert not pending, f'head convs after the last output conv: {pending}'
    return groups


def sq_norms(tree) -> dict[str, float]:
    """{'backbone/conv_NNN': sum of squares of every leaf under that conv}."""
    out: dict[str, float] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = '/'.join(getattr(k, 'key', str(k)) for k in path[:2])
        out[key] = out.get(key, 0.0) + float(np.sum(np.square(np.asarray(leaf, np.float64))))
    return out


groups = layer_groups(params, model)
grad_sq, param_sq = sq_norms(grads), sq_norms(params)
assert sorted(grad_sq) == sorted(p for paths in groups.values() for p in paths), 'every conv in exactly one group'
group_norm = {g: np.sqrt(sum(grad_sq[p] for p in paths)) for g, paths in groups.items()}
group_ratio = {g: group_norm[g] / np.sqrt(sum(param_sq[p] for p in paths)) for g, paths in groups.items()}
global_norm = float(jax.jit(optax.tree.norm)(grads))
np.testing.assert_allclose(np.sqrt(sum(v**2 for v in group_norm.values())), global_norm, rtol=1e-4)
assert np.isfinite(global_norm) and global_norm > 0
print(f'global gradient norm {global_norm:.4g}')
for g, paths in groups.items():
    names = [p.split('/')[1] for p in paths]
    print(f'  {g:22s} {len(paths):3d} convs ({names[0]}…{names[-1]})  ‖g‖ {group_norm[g]:9.4g}  '
          f'‖g‖/‖w‖ {group_ratio[g]:9.3g}')

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw=dict(width_ratios=(1, 1.6)))
colors = {g: plt.cm.tab20(i % 20) for i, g in enumerate(groups)}
y = np.arange(len(groups))[::-1]
ax1.barh(y, list(group_norm.values()), color=list(colors.values()))
ax1.set_yticks(y, list(groups))
ax1.set_xscale('log')
ax1.set_xlabel('‖gradient‖ (L2, log scale)')
for yi, g in zip(y, groups, strict=True):
    ax1.text(group_norm[g], yi, f' {group_ratio[g]:.1e}', va='center', fontsize=8)
ax1.set_title('per group (text: ‖grad‖ / ‖param‖)')
order = [(g, p) for g, paths in groups.items() for p in paths]
ax2.bar(np.arange(len(order)), [np.sqrt(grad_sq[p]) for _, p in order], color=[colors[g] for g, _ in order])
ax2.set_yscale('log')
ax2.set_xlabel('convolution, Darknet order (backbone conv_000… then head)')
ax2.set_ylabel('‖gradient‖')
ax2.set_title('per convolution (colour = group)')
fig.suptitle(f'Gradient norms (global {global_norm:.3g}, BatchNorm mode {BN_MODE!r})')
fig.tight_layout()
show(fig, 'gradients')

# %% [markdown]
# ## One knob at a time, re-jitted in place
#
# ### The ignore threshold (a static value: a new value recompiles)
#
# `ignore_thresh` is a Python float inside the compiled loss. Calling `loss_from_outputs` with a value it has seen
# reuses the cached program; a new value **traces and compiles again** (watch `TRACES` and the time). A higher
# threshold exempts fewer background predictions, so the conf loss can only grow with it; giou and prob do not
# depend on it at all. (In `train.py` the value is bound into the whole training step, so changing
# `config.loss.ignore_thresh` there recompiles the step, network included.)

# %%
THRESHOLDS = (IGNORE, IGNORE, 0.3, 0.7, 0.9)
sweep = {}
print(f'{"ignore":>6s} {"traces":>6s} {"time":>8s} {"ignored/img":>11s} {"conf":>8s} {"total":>8s}')
for thresh in THRESHOLDS:
    before = len(TRACES)
    t0 = time.perf_counter()
    comp, m = jax.block_until_ready(loss_from_outputs(outputs, inputs['labels'], inputs['bboxes'], thresh))
    dt = time.perf_counter() - t0
    sweep[thresh] = {k: float(v) for k, v in comp.items()}
    sweep[thresh]['ignored'] = float(sum(x['ignored'].sum() for x in m)) / BATCH_SIZE
    note = 'compiled' if len(TRACES) > before else 'cached'
    print(f'{thresh:6.2f} {len(TRACES):6d} {dt * 1e3:6.0f} ms {sweep[thresh]["ignored"]:11.1f} '
          f'{sweep[thresh]["conf"]:8.3f} {sweep[thresh]["total"]:8.3f}  ({note})')
assert TRACES == sorted(set(THRESHOLDS), key=THRESHOLDS.index), f'one trace per new value, got {TRACES}'
ordered = sorted(sweep)
assert all(sweep[a]['conf'] <= sweep[b]['conf'] * (1 + 1e-6) for a, b in zip(ordered, ordered[1:])), 'conf monotone'
assert all(sweep[a]['ignored'] >= sweep[b]['ignored'] for a, b in zip(ordered, ordered[1:]))
for t in ordered:
    for k in ('giou', 'prob'):
        np.testing.assert_allclose(sweep[t][k], components[k], rtol=1e-6, err_msg=f'{k} at ignore_thresh {t}')

# %% [markdown]
# ### Label smoothing (re-encoded targets: new values, same shapes, no recompile)
#
# The smoothing lives in the targets, not in the loss: the encoder writes one-hot · (1 − d) + d / C. We re-encode
# this batch's ground truth (`boxes`, `classes`, after augmentation) with `targets.encode_targets_batch` and a
# different `label_smoothing`. First a check that re-encoding with the config's own value reproduces the pipeline's
# targets exactly. The new labels have the same shapes and dtypes, so the compiled loss is **reused** (no new
# trace). Only prob changes. With d > 0 the class targets are no longer 0/1, so even a perfect classifier pays
# the entropy of the targets: the printed floor = responsible slots per image · [(C − 1) · H(d/C) + H(1 − d + d/C)]
# (H the binary entropy) is the part of the prob loss no model can remove.

# %%
base_params = targets_lib.TargetParams.from_spec(SPEC, config.data)


def encode(label_smoothing: float):
    params_ls = dataclasses.replace(base_params, label_smoothing=label_smoothing)
    labels_ls, bboxes_ls = targets_lib.encode_targets_batch(tf.constant(batch['boxes']), tf.constant(batch['classes']),
                                                            params_ls)
    return tuple(x.numpy() for x in labels_ls), tuple(x.numpy() for x in bboxes_ls)


def binary_entropy(p: float) -> float:
    return 0.0 if p <= 0 or p >= 1 else float(-p * np.log(p) - (1 - p) * np.log(1 - p))


same_labels, same_bboxes = encode(base_params.label_smoothing)
for ours, theirs in zip((*same_labels, *same_bboxes), (*batch['labels'], *batch['bboxes']), strict=True):
    np.testing.assert_array_equal(ours, theirs)
print('re-encoding reproduces the pipeline targets exactly')

responsible_per_image = sum(r.sum() for r in respond) / BATCH_SIZE
smoothing = {}
traces_before = len(TRACES)
print(f'{"smoothing":>9s} {"prob":>8s} {"floor":>8s} {"total":>8s} {"traces":>6s}')
for d in (0.0, base_params.label_smoothing, 0.1, 0.3):
    labels_ls, bboxes_ls = encode(d)
    comp, _ = loss_from_outputs(outputs, labels_ls, bboxes_ls, IGNORE)
    comp = {k: float(v) for k, v in comp.items()}
    c = NUM_CLASSES
    floor = responsible_per_image * ((c - 1) * binary_entropy(d / c) + binary_entropy(1 - d + d / c))
    smoothing[d] = dict(comp, floor=floor)
    print(f'{d:9.2f} {comp["prob"]:8.3f} {floor:8.3f} {comp["total"]:8.3f} {len(TRACES):6d}')
    for k in ('giou', 'conf'):
        np.testing.assert_allclose(comp[k], components[k], rtol=1e-6, err_msg=f'{k} at label_smoothing {d}')
    assert comp['prob'] >= floor * (1 - 1e-5), (d, comp['prob'], floor)
assert len(TRACES) == traces_before, 'new label values with the same shapes must not retrace'
np.testing.assert_allclose(smoothing[base_params.label_smoothing]['prob'], components['prob'], rtol=1e-6)

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
ax1.plot(ordered, [sweep[t]['conf'] for t in ordered], 'o-', color='tab:red')
ax1.set_xlabel('ignore_thresh')
ax1.set_ylabel('conf loss', color='tab:red')
ax1b = ax1.twinx()
ax1b.plot(ordered, [sweep[t]['ignored'] for t in ordered], 's--', color='tab:purple')
ax1b.set_ylabel('ignored slots per image', color='tab:purple')
ax1.set_title('ignore threshold')
ds = sorted(smoothing)
ax2.plot(ds, [smoothing[d]['prob'] for d in ds], 'o-', label='prob loss')
ax2.plot(ds, [smoothing[d]['floor'] for d in ds], 's--', label='entropy floor')
ax2.set_xlabel('label_smoothing')
ax2.set_ylabel('per image')
ax2.legend()
ax2.set_title('label smoothing')
fig.tight_layout()
show(fig, 'knobs')

# %% [markdown]
# ## Summary
#
# Every invariant held: the per-cell maps add up to `yolo_loss`'s components (computed by two different compiled
# programs), giou/prob live only on responsible slots, ignored slots are never responsible and pay no conf loss,
# the conf loss grows with the ignore threshold while giou/prob ignore it, re-encoding reproduces the pipeline's
# targets, and label smoothing changes only prob, never below its entropy floor.
#
# Where to go from here: set `IMAGE` to look at another image, `YOLO_WORKDIR` to look at a trained model, or
# `BN_MODE = 'running'` to see the validation loss of a checkpoint instead of the training one.

# %%
print(f'done: {elapsed()}')
