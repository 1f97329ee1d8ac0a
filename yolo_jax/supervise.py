"""Multi-process runs: a lost peer or an unreachable coordinator ends each survivor with one `error:` line.

When a process of a `jax.distributed` run dies, the survivors learn it from JAX's coordination service (a peer's
missed heartbeats, or the coordinator's socket closing) on a native thread, whose only reaction is a native abort:
`client.h: Terminating process because the JAX distributed service detected fatal errors`, a stack dump and exit
134 (SIGABRT). The hook that would replace it (the `missed_heartbeat_callback` of jaxlib's distributed client)
cannot be driven from Python: jaxlib has no Python conversion for its `absl::Status` argument, so a Python
callback fails with `std::bad_cast`. The same abort ends a process that cannot reach its coordinator within
`--coordinator_timeout_seconds` (jax.distributed.initialize's `initialization_timeout`).

So a multi-process command runs the real work in a child process (the same command, marked by SUPERVISED_ENV) and
supervises it: the child's stderr passes through unchanged up to the native abort (whose message and dump are held
back), and when the child ends by that abort the supervisor prints one `error:` line naming the lost process (parsed
from the coordination service's message) and the newest complete checkpoint to resume from, and exits with
errors.EXIT_CODE. The child dies with its supervisor (Linux PR_SET_PDEATHSIG), so killing the command kills the
work. A collective that fails inside the child (e.g. Gloo's 'Connection closed by peer') is logged in one line
instead of a traceback while the coordination service names the lost peer.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from yolo_jax import errors

SUPERVISED_ENV = 'YOLO_JAX_SUPERVISED'
# The child's one line for a collective that failed because a peer is gone; it then waits for the service's verdict.
COLLECTIVE_FAILED = 'collective operation failed (a peer process is probably gone):'
_FATAL = 'JAX distributed service detected fatal errors'
_PEER_FAILURE = re.compile(r'Gloo|NCCL|Connection (closed|reset) by peer|heartbeat|coordination service|'
                           r'UNAVAILABLE|Socket closed|DEADLINE_EXCEEDED', re.IGNORECASE)


def is_child() -> bool:
    """True in the supervised child (it runs the work itself)."""
    return os.environ.get(SUPERVISED_ENV, '') == '1'


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the supervisor dies (Linux; elsewhere a no-op)."""
    try:
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def lost_process(log: str, process_id: int, coordinator: str) -> str:
    """Which process the coordination service's messages in `log` say was lost, in words."""
    m = re.search(r'[Tt]ask (\d+) heartbeat timeout', log) or re.search(
        r'stopped sending heartbeats\):\s*([\d][\d,\s]*)', log)
    if m:
        ids = sorted({int(x) for x in re.findall(r'\d+', m.group(1))})
        return f'process {", ".join(map(str, ids))} stopped answering (killed, crashed or unreachable)'
    if re.search(r'RegisterTask', log) and re.search(r'DEADLINE_EXCEEDED|Deadline Exceeded', log):
        return ''  # never connected: see connect_failure
    if process_id != 0 and re.search(r'Socket closed|Connection refused|failed to connect|UNAVAILABLE', log):
        return f'process 0 (the coordinator at {coordinator}) is gone'
    return 'a peer process was lost'


def newest_checkpoint(workdir: str | None) -> str:
    """'WORKDIR/checkpoints/STEP' of the newest complete checkpoint, or a phrase saying there is none."""
    if not workdir:
        return 'no workdir'
    directory = Path(workdir).absolute() / 'checkpoints'
    steps = sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit()), reverse=True) \
        if directory.is_dir() else []
    from yolo_jax.checkpointing import damage  # noqa: PLC0415  (orbax: only when reporting)

    for step in steps:
        if damage(directory, step) is None:
            return str(directory / str(step))
    return f'none yet in {directory} (the run starts from scratch)'


def report(log: str, *, process_id: int, num_processes: int, coordinator: str, timeout_s: int,
           workdir: str | None) -> str:
    """The `error:` message for a child that ended by the coordination service's abort (or a failed collective)."""
    lost = lost_process(log, process_id, coordinator)
    who = f'process {process_id} of {num_processes}' if 0 <= process_id < num_processes else 'this process'
    if not lost:
        return (f'{who}: could not connect all processes through the coordinator '
                f'at {coordinator or "(auto-detected)"} within {timeout_s} s (--coordinator_timeout_seconds): is '
                'every process started, with the same --coordinator_address and --num_processes, and the port '
                'reachable?')
    return (f'{who}: {lost}; this process stopped too. Start the same commands '
            f'again to resume from the last checkpoint: {newest_checkpoint(workdir)}')


def run_supervised(argv: list[str], *, process_id: int, num_processes: int, coordinator: str, timeout_s: int,
                   workdir: str | None) -> None:
    """Runs `python -m yolo_jax.main argv` as a supervised child (see the module docstring) and exits with its
    exit code, or with one `error:` line and errors.EXIT_CODE when the coordination service aborted it."""
    env = dict(os.environ, **{SUPERVISED_ENV: '1'})
    child = subprocess.Popen([sys.executable, '-m', 'yolo_jax.main', *argv], env=env, stderr=subprocess.PIPE,
                             text=True, errors='replace', bufsize=1, preexec_fn=_die_with_parent)
    tail: collections.deque[str] = collections.deque(maxlen=400)
    fatal = False
    # Ctrl-C reaches the child from the terminal (same process group): the supervisor just waits for it to end.
    # SIGTERM (e.g. `kill PID`) is passed on; the child dies with the supervisor anyway.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda s, _f: child.send_signal(s))
    for line in child.stderr:
        tail.append(line)
        fatal = fatal or _FATAL in line
        if not fatal:  # from the abort on, the rest is its dump (native and Python stacks of every thread)
            sys.stderr.write(line)
            sys.stderr.flush()
    code = child.wait()
    log = ''.join(tail)
    aborted = code in (-signal.SIGABRT, 128 + signal.SIGABRT) and _FATAL in log
    if aborted or (code != 0 and COLLECTIVE_FAILED in log):
        message = report(log, process_id=process_id, num_processes=num_processes, coordinator=coordinator,
                         timeout_s=timeout_s, workdir=workdir)
        print(f'error: {message}', file=sys.stderr, flush=True)
        sys.exit(errors.EXIT_CODE)
    sys.exit(code if code >= 0 else 128 - code)


def is_peer_failure(error: BaseException) -> bool:
    """True for an error a lost peer causes (a failed collective, the coordination service's errors)."""
    return bool(_PEER_FAILURE.search(f'{type(error).__name__}: {error}'))


def await_verdict(error: BaseException, heartbeat_timeout_s: int) -> None:
    """In the child, after a collective failed: one line instead of a traceback, then wait for the coordination
    service to abort this process (the supervisor reports it); exit 3 if it never does."""
    print(f'{COLLECTIVE_FAILED} {_first_line(error)}', file=sys.stderr, flush=True)
    time.sleep(heartbeat_timeout_s + 30)
    os._exit(3)


def _first_line(error: BaseException) -> str:
    """The first line of an error's message (at most 300 characters), or its type's name when it has none."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and the exceptions it was raised from or during (explicit and implicit chaining)."""
    chain = [error]
    while (chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    return chain


def shorten_peer_failure(record: logging.LogRecord) -> None:
    """A log record whose exception a lost peer caused (e.g. orbax's background commit thread, whose barrier fails
    when a peer dies mid-save) keeps one line, without the traceback: the run's one `error:` line names the peer."""
    chain = _chain(record.exc_info[1]) if record.exc_info and record.exc_info[1] else []
    cause = next((e for e in chain if is_peer_failure(e)), None)
    if cause is not None:
        record.msg = f'{record.getMessage()} ({type(cause).__name__}: {_first_line(cause)})'
        record.args, record.exc_info, record.exc_text = (), None, None
