"""Console progress: the reference's per-step lines, and a progress bar with rate and ETA on terminals."""

import sys
import time

from absl import logging


def format_train_line(epoch: int, step_in_epoch: int, steps_per_epoch: int, lr: float, m: dict) -> str:
    """The TF2 reference's training line (same fields and widths)."""
    return (
        f"epoch:{epoch:2.0f} step:{step_in_epoch:5.0f}/{steps_per_epoch}, lr:{lr:.6f}, "
        f"giou_loss:{m['giou']:7.2f}, conf_loss:{m['conf']:7.2f}, prob_loss:{m['prob']:7.2f}, "
        f"total_loss:{m['total']:7.2f}"
    )


def format_val_line(m: dict) -> str:
    return (
        f"giou_val_loss:{m['giou']:7.2f}, conf_val_loss:{m['conf']:7.2f}, "
        f"prob_val_loss:{m['prob']:7.2f}, total_val_loss:{m['total']:7.2f}"
    )


class Progress:
    """Counts steps; draws a one-line bar (rate, ETA) when stderr is a terminal, else stays silent."""

    def __init__(self, total_steps: int, start_step: int = 0, stream=None):
        self.total, self.start = total_steps, start_step
        self.stream = stream or sys.stderr
        self.interactive = getattr(self.stream, 'isatty', lambda: False)()
        self.t0 = time.monotonic()
        self.step = start_step

    @property
    def rate(self) -> float:
        """Steps per second since this run started (resumed steps excluded)."""
        return (self.step - self.start) / max(time.monotonic() - self.t0, 1e-9)

    @property
    def eta_seconds(self) -> float:
        r = self.rate
        return (self.total - self.step) / r if r > 0 else float('inf')

    def update(self, step: int, note: str = '') -> None:
        self.step = step
        if not self.interactive:
            return
        frac = step / max(self.total, 1)
        bar = '#' * int(30 * frac) + '-' * (30 - int(30 * frac))
        eta = self.eta_seconds
        eta_s = time.strftime('%H:%M:%S', time.gmtime(eta)) if eta != float('inf') else '--:--:--'
        self.stream.write(f'\r[{bar}] {step}/{self.total} {self.rate:.2f} step/s ETA {eta_s} {note}\x1b[K')
        self.stream.flush()

    def log(self, line: str) -> None:
        """Logs a line without breaking the bar."""
        if self.interactive:
            self.stream.write('\r\x1b[K')
        logging.info(line)
