"""Time-to-accuracy table and curves from finished runs of `run.sh`.

    python experiments/time_to_accuracy/summarize.py --out=experiments/time_to_accuracy NAME=WORKDIR ...

For each run: minutes from the command's start (WORKDIR/start_time; WORKDIR/end_time when it ended) to the first
mAP report with VOC mAP@0.5 >= 0.80 and >= 0.90 (mAP is computed at the end of an epoch, so the time includes that
epoch's validation and mAP), the final mAP, epochs and the median epoch time. Writes OUT/results.json, OUT/table.md
and OUT/curves.png (mAP against wall-clock minutes and against epochs).
"""

import argparse
import json
import statistics
from pathlib import Path

THRESHOLDS = (0.80, 0.90)


def load_run(workdir: Path) -> dict:
    """The run's mAP reports as (minutes since start, epoch, map50) and its epoch boundaries' times."""
    start = float((workdir / 'start_time').read_text())
    records = [json.loads(ln) for ln in (workdir / 'metrics.jsonl').read_text().splitlines() if ln.strip()]
    points = [((r['time'] - start) / 60, r['epoch'], r['map50']) for r in records if r['kind'] == 'map']
    val_times = [r['time'] for r in records if r['kind'] == 'val']
    epoch_s = [b - a for a, b in zip(val_times, val_times[1:])]
    command = (workdir / 'command').read_text().strip() if (workdir / 'command').exists() else ''
    end = float((workdir / 'end_time').read_text()) if (workdir / 'end_time').exists() else None
    return {'points': points, 'epoch_s': epoch_s, 'command': command,
            'total_min': (end - start) / 60 if end else None}


def summarize(name: str, run: dict) -> dict:
    points = run['points']
    row = {'name': name, 'command': run['command'], 'epochs': points[-1][1] + 1 if points else 0,
           'final_map50': points[-1][2] if points else None,
           'best_map50': max(p[2] for p in points) if points else None,
           'median_epoch_s': statistics.median(run['epoch_s']) if run['epoch_s'] else None,
           'total_min': run['total_min']}
    for t in THRESHOLDS:
        hit = next((p for p in points if p[2] >= t), None)
        row[f'min_to_{t:.2f}'] = hit[0] if hit else None
        row[f'epoch_to_{t:.2f}'] = hit[1] + 1 if hit else None
    return row


def fmt(x, spec: str) -> str:
    return '—' if x is None else format(x, spec)


def table(rows: list[dict]) -> str:
    head = ('| run | min to 0.80 (epoch) | min to 0.90 (epoch) | final mAP@0.5 | epochs | s/epoch | total min |\n'
            '|---|---|---|---|---|---|---|\n')
    lines = [f"| {r['name']} | {fmt(r['min_to_0.80'], '.1f')} ({fmt(r['epoch_to_0.80'], 'd')}) | "
             f"{fmt(r['min_to_0.90'], '.1f')} ({fmt(r['epoch_to_0.90'], 'd')}) | {fmt(r['final_map50'], '.3f')} | "
             f"{r['epochs']} | {fmt(r['median_epoch_s'], '.0f')} | {fmt(r['total_min'], '.1f')} |" for r in rows]
    return head + '\n'.join(lines) + '\n'


def plot(runs: dict[str, dict], out: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (ax, ax_epoch, ax_zoom) = plt.subplots(1, 3, figsize=(21, 5.5))
    colours = plt.cm.tab20.colors  # more runs than the default cycle's 10 colours
    for i, (name, run) in enumerate(runs.items()):
        style = dict(color=colours[i % len(colours)], marker='o', markersize=3, label=name)
        epochs, maps = [p[1] + 1 for p in run['points']], [p[2] for p in run['points']]
        ax.plot([p[0] for p in run['points']], maps, **style)
        ax_epoch.plot(epochs, maps, **style)
        ax_zoom.plot(epochs, maps, **style)
    for a in (ax, ax_epoch, ax_zoom):
        for t in THRESHOLDS:
            a.axhline(t, color='grey', lw=0.8, ls='--')
        a.set_ylabel('VOC mAP@0.5, MNIST test split (200 images)')
        a.set_ylim(0, 1)
        a.grid(alpha=0.3)
        a.legend(fontsize=8, loc='lower right')
    ax.axvline(20, color='red', lw=0.8, ls=':')
    ax.set_xlabel('wall-clock minutes since the command started (2-core AMD EPYC VM)')
    ax_epoch.set_xlabel('epochs (independent of machine load)')
    ax_zoom.set_ylim(0.7, 0.95)
    ax_zoom.set_xlim(0.5, 10.5)
    ax_zoom.set_xlabel('epochs, zoomed on the first 10 and mAP 0.70-0.95')
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', required=True, type=Path)
    p.add_argument('runs', nargs='+', help='NAME=WORKDIR')
    args = p.parse_args()
    runs = {name: load_run(Path(wd)) for name, wd in (r.split('=', 1) for r in args.runs)}
    rows = [summarize(name, run) for name, run in runs.items()]
    args.out.mkdir(parents=True, exist_ok=True)
    points = {n: r['points'] for n, r in runs.items()}
    (args.out / 'results.json').write_text(json.dumps({'rows': rows, 'points': points}, indent=1))
    (args.out / 'table.md').write_text(table(rows))
    plot(runs, args.out / 'curves.png')
    print(table(rows))


if __name__ == '__main__':
    main()
