"""Console output: the reference's line formats and the terminal progress bar."""

import io

from yolo_jax.progress import Progress, format_train_line, format_val_line


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_reference_line_formats():
    m = {'giou': 2.7182, 'conf': 0.35, 'prob': 2.83, 'total': 5.8982}
    assert format_train_line(29, 213, 250, 1e-6, m) == (
        'epoch:29 step:  213/250, lr:0.000001, giou_loss:   2.72, conf_loss:   0.35, prob_loss:   2.83, '
        'total_loss:   5.90'
    )
    assert format_val_line(m) == (
        'giou_val_loss:   2.72, conf_val_loss:   0.35, prob_val_loss:   2.83, total_val_loss:   5.90'
    )


def test_progress_bar_on_terminal_only():
    tty = _Tty()
    p = Progress(total_steps=10, start_step=0, stream=tty)
    p.update(5, 'loss 1.00')
    out = tty.getvalue()
    assert out.startswith('\r[' + '#' * 15 + '-' * 15 + '] 5/10') and 'step/s ETA' in out and 'loss 1.00' in out
    pipe = io.StringIO()  # not a terminal (CI logs, nohup): no bar at all
    Progress(total_steps=10, stream=pipe).update(5)
    assert pipe.getvalue() == ''
