"""The BCCD lever table and curves from finished runs of `run.sh`.

    python experiments/bccd/summarize.py --out=experiments/bccd NAME=WORKDIR ...

For each run: the mAP reports of metrics.jsonl (VOC mAP@0.5 and COCO mAP@[.5:.95] on BCCD `test`, at the end of
the epochs they were computed), minutes from the command's start (WORKDIR/start_time, end_time) to the first
report >= 0.90, the final evaluation's figures (the last step's weights; per-class AP@0.5 from its diagnostics,
WORKDIR/diagnostics/diagnostics.json), those of `--mode=eval` on the best checkpoint by validation loss (what a
user's eval and detect load: WORKDIR/eval/metrics.json) and the median epoch time. Writes OUT/results.json,
OUT/table.md and OUT/curves.png.
"""

import argparse
import json
import statistics
from pathlib import Path

GOAL_MAP50, GOAL_COCO, GOAL_MIN = 0.94, 0.60, 20.0


def load_run(workdir: Path) -> dict:
    """The run's mAP reports as (minutes since start, epoch, map50, coco_map), epoch times and per-class AP."""
    start = float((workdir / 'start_time').read_text())
    end = float((workdir / 'end_time').read_text())
    records = [json.loads(ln) for ln in (workdir / 'metrics.jsonl').read_text().splitlines() if ln.strip()]
    points = [((r['time'] - start) / 60, r['epoch'], r['map50'], r['coco_map']) for r in records if r['kind'] == 'map']
    val_times = [r['time'] for r in records if r['kind'] == 'val']
    evaluation = json.loads((workdir / 'eval' / 'metrics.json').read_text())
    diagnostics = json.loads((workdir / 'diagnostics' / 'diagnostics.json').read_text())
    per_class = {evaluation['class_names'][c['class']]: c['ap'] for c in diagnostics['pr_curves']['per_class']}
    return {'points': points, 'epoch_s': [b - a for a, b in zip(val_times, val_times[1:])],
            'command': (workdir / 'command').read_text().strip(), 'total_min': (end - start) / 60,
            'per_class': per_class, 'eval': evaluation['metrics']}


def summarize(name: str, run: dict) -> dict:
    points = run['points']
    hit = next((p for p in points if p[2] >= 0.90), None)
    row = {'name': name, 'command': run['command'], 'epochs': points[-1][1] + 1, 'total_min': run['total_min'],
           'median_epoch_s': statistics.median(run['epoch_s']) if run['epoch_s'] else None,
           'min_to_0.90': hit[0] if hit else None, 'epoch_to_0.90': hit[1] + 1 if hit else None,
           'map50': points[-1][2], 'coco_map': points[-1][3],
           'best_ckpt_map50': run['eval']['map50'], 'best_ckpt_coco_map': run['eval']['coco_map']}
    for cls, ap in run['per_class'].items():
        row[f'ap50_{cls}'] = ap
    row['goal'] = bool(row['map50'] >= GOAL_MAP50 and row['coco_map'] >= GOAL_COCO and run['total_min'] <= GOAL_MIN)
    return row


def fmt(x, spec: str) -> str:
    return '—' if x is None else format(x, spec)


def table(rows: list[dict], classes: list[str]) -> str:
    head = ('| run | epochs | total min | s/epoch | min to 0.90 (epoch) | mAP@0.5 | COCO AP | '
            + ' | '.join(f'AP50 {c}' for c in classes) + ' | best ckpt mAP@0.5 / COCO |\n|'
            + '---|' * (8 + len(classes)) + '\n')
    lines = [f"| {r['name']} | {r['epochs']} | {r['total_min']:.1f} | {fmt(r['median_epoch_s'], '.0f')} | "
             f"{fmt(r['min_to_0.90'], '.1f')} ({fmt(r['epoch_to_0.90'], 'd')}) | {r['map50']:.3f} | "
             f"{r['coco_map']:.3f} | " + ' | '.join(fmt(r[f'ap50_{c}'], '.3f') for c in classes)
             + f" | {r['best_ckpt_map50']:.3f} / {r['best_ckpt_coco_map']:.3f} |"
             for r in rows]
    return head + '\n'.join(lines) + '\n'


def plot(runs: dict[str, dict], out: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (ax50, ax_coco) = plt.subplots(1, 2, figsize=(14, 5))
    colours = plt.cm.tab10.colors
    for i, (name, run) in enumerate(runs.items()):
        style = dict(color=colours[i % len(colours)], marker='o', markersize=3, label=name)
        epochs = [p[1] + 1 for p in run['points']]
        ax50.plot(epochs, [p[2] for p in run['points']], **style)
        ax_coco.plot(epochs, [p[3] for p in run['points']], **style)
    for a, goal, label in ((ax50, GOAL_MAP50, 'VOC mAP@0.5'), (ax_coco, GOAL_COCO, 'COCO mAP@[.5:.95]')):
        a.axhline(goal, color='red', lw=0.8, ls=':')
        a.set_ylabel(f'{label}, BCCD test (72 images)')
        a.set_xlabel('epochs (independent of machine load)')
        a.grid(alpha=0.3)
        a.legend(fontsize=8, loc='lower right')
    ax50.set_ylim(0.6, 1.0)
    ax_coco.set_ylim(0.3, 0.7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', required=True, type=Path)
    p.add_argument('runs', nargs='+', help='NAME=WORKDIR')
    args = p.parse_args()
    runs = {name: load_run(Path(wd)) for name, wd in (r.split('=', 1) for r in args.runs)}
    classes = list(next(iter(runs.values()))['per_class'])
    rows = [summarize(name, run) for name, run in runs.items()]
    args.out.mkdir(parents=True, exist_ok=True)
    points = {n: r['points'] for n, r in runs.items()}
    (args.out / 'results.json').write_text(json.dumps({'rows': rows, 'points': points}, indent=1) + '\n')
    (args.out / 'table.md').write_text(table(rows, classes))
    plot(runs, args.out / 'curves.png')
    print(table(rows, classes))


if __name__ == '__main__':
    main()
