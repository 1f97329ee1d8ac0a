"""Builds the .ipynb of each percent-format notebook in experiments/ (the .py is the source of truth).

    python experiments/sync_notebooks.py            # rewrite every experiments/*.ipynb from its .py
    python experiments/sync_notebooks.py --check    # exit 1 if any .ipynb is missing or out of sync

A notebook source is a `.py` in jupytext's percent format: cells start with `# %%` (code) or `# %% [markdown]`
(markdown, every line commented with `# `); an optional jupytext YAML header (`# ---` ... `# ---`) is skipped.
The generated notebook has no outputs and carries jupytext pairing metadata (`ipynb,py:percent`), so with
jupytext installed, saving it in Jupyter updates the `.py` too. Only the standard library is needed here, so
tests can use `read_percent` / `read_ipynb` without jupytext or nbformat installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
_MARKER = re.compile(r'^# %%(?:\s+.*?)?(?:\s*\[(?P<kind>\w+)\])?\s*$')
_KINDS = {None: 'code', 'markdown': 'markdown', 'md': 'markdown', 'raw': 'raw'}


def is_percent_notebook(path: Path) -> bool:
    """A .py whose first line is a cell marker or a jupytext header."""
    if path.suffix != '.py' or path.resolve() == Path(__file__).resolve():
        return False
    first = path.read_text().split('\n', 1)[0]
    return bool(_MARKER.match(first)) or first.strip() == '# ---'


def _uncomment(line: str) -> str:
    if line.startswith('# '):
        return line[2:]
    return '' if line.strip() == '#' else line


def read_percent(path: Path) -> list[tuple[str, str]]:
    """[(cell_type, source)] of a percent-format .py: blank lines around each cell are dropped."""
    lines = path.read_text().splitlines()
    if lines and lines[0].strip() == '# ---':  # jupytext's YAML header
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == '# ---')
        lines = lines[end + 1 :]
    cells: list[tuple[str, list[str]]] = []
    for line in lines:
        match = _MARKER.match(line)
        if match:
            kind = match.group('kind')
            if kind not in _KINDS:
                raise ValueError(f'{path}: unknown cell kind [{kind}] in {line!r}')
            cells.append((_KINDS[kind], []))
        elif cells:
            cells[-1][1].append(line)
        elif line.strip():
            raise ValueError(f'{path}: text before the first `# %%` cell marker: {line!r}')
    out = []
    for kind, body in cells:
        if kind == 'markdown':
            body = [_uncomment(x) for x in body]
        out.append((kind, '\n'.join(body).strip('\n')))
    return out


def _source_lines(source: str) -> list[str]:
    lines = source.split('\n')
    return [x + '\n' for x in lines[:-1]] + [lines[-1]] if source else []


def to_notebook(cells: list[tuple[str, str]]) -> dict:
    """An nbformat 4.5 notebook (a JSON-able dict) with these cells and no outputs."""
    nb_cells = []
    for i, (kind, source) in enumerate(cells):
        cell = {
            'cell_type': kind,
            'id': hashlib.sha1(f'{i}:{source}'.encode()).hexdigest()[:12],  # stable while the cell is unchanged
            'metadata': {},
            'source': _source_lines(source),
        }
        if kind == 'code':
            cell['execution_count'] = None
            cell['outputs'] = []
        nb_cells.append(cell)
    return {
        'cells': nb_cells,
        'metadata': {
            'jupytext': {'formats': 'ipynb,py:percent'},
            'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'},
            'language_info': {'name': 'python'},
        },
        'nbformat': 4,
        'nbformat_minor': 5,
    }


def read_ipynb(path: Path) -> list[tuple[str, str]]:
    """[(cell_type, source)] of an .ipynb (sources joined, blank lines around them dropped)."""
    nb = json.loads(path.read_text())
    out = []
    for cell in nb['cells']:
        source = cell['source']
        out.append((cell['cell_type'], (''.join(source) if isinstance(source, list) else source).strip('\n')))
    return out


def notebook_text(py_path: Path) -> str:
    return json.dumps(to_notebook(read_percent(py_path)), indent=1, ensure_ascii=False) + '\n'


def sources(directory: Path = HERE) -> list[Path]:
    """The percent-format notebooks of `directory`."""
    return sorted(p for p in directory.glob('*.py') if is_percent_notebook(p))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--check', action='store_true', help='only check; exit 1 if out of sync')
    parser.add_argument('paths', nargs='*', type=Path, help='percent-format .py files (default: all in experiments/)')
    args = parser.parse_args(argv)
    stale = []
    for py in args.paths or sources():
        ipynb = py.with_suffix('.ipynb')
        if args.check:
            if not ipynb.is_file() or read_ipynb(ipynb) != read_percent(py):
                stale.append(ipynb)
        else:
            ipynb.write_text(notebook_text(py))
            print(f'wrote {ipynb}')
    for path in stale:
        print(f'out of sync: {path} (run python experiments/sync_notebooks.py)', file=sys.stderr)
    return 1 if stale else 0


if __name__ == '__main__':
    sys.exit(main())
