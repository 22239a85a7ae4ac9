"""A trainer in a child process under a wall-clock budget, for `compare.py`.

Imports nothing heavy, so that a spawned child (and the tests' children) start in well under a second.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import threading
import time


def supervise(curve, target, args, grace_s):
    """Runs `target(messages, *args)` in a child process and collects what it sends into `curve`: ("settings",
    dict), ("point", evaluation dict), then ("done", None) or ("error", text). The child is killed once its
    training time (elapsed since `curve.start` minus its evaluation time) passes the budget by `grace_s` without
    an evaluation: a PPO training step with Playground's settings can outlast the whole budget on a CPU, and a
    running XLA computation cannot be interrupted from inside. Returns the settings."""
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    child = context.Process(target=_orphan_safe, args=(os.getpid(), target, messages, *args), daemon=True)
    settings, eval_time_s = {}, 0.0
    child.start()
    try:
        while True:
            try:
                kind, payload = messages.get(timeout=0.5)
            except queue_module.Empty:
                training_s = time.perf_counter() - curve.start - eval_time_s
                if not child.is_alive():
                    raise RuntimeError(f"{curve.name} exited with code {child.exitcode} before finishing") from None
                if training_s > curve.budget_s + grace_s:
                    curve.stopped_at_train_time_s = round(training_s, 1)
                    last = curve.points[-1]["env_steps"] if curve.points else None
                    print(f"  {curve.name} stopped at {training_s:.0f} s of training: "
                          + ("no evaluation at all" if last is None else f"no evaluation since {last:,} env steps"),
                          flush=True)
                    return settings
                continue
            if kind == "settings":
                settings = payload
            elif kind == "point":
                curve.points.append(payload)
                eval_time_s = payload["eval_time_s"]
            elif kind == "error":
                raise RuntimeError(f"{curve.name} failed: {payload}")
            else:  # done
                return settings
    finally:
        if child.is_alive():
            child.kill()
        child.join(timeout=30)
        _drain(messages, curve)


def _orphan_safe(parent_pid, target, messages, *args):
    """Runs `target(messages, *args)` in the child, which exits as soon as its parent is gone. A parent killed by
    a signal runs no `finally`, and a daemon child is only reaped at a normal exit: without this watchdog an
    interrupted comparison leaves a trainer running, which takes the core from the next run."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    target(messages, *args)


def _drain(messages, curve):
    """Evaluations a killed child sent just before the kill."""
    while True:
        try:
            kind, payload = messages.get(timeout=0.1)
        except (queue_module.Empty, EOFError, OSError):
            return
        if kind == "point" and payload not in curve.points:
            curve.points.append(payload)
