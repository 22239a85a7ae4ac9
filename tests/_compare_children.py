"""Children for tests/test_compare_script.py's `compare.supervise` tests, in a module of their own so that a
spawned child imports nothing heavy (no JAX) and starts in well under a second."""

import time


def child_that_stalls(messages, steps):
    messages.put(("settings", {"kind": "stall"}))
    messages.put(("point", dict(env_steps=steps, eval_time_s=0.0, train_time_s=0.0, eval_return=1.0,
                                eval_return_std=0.0)))
    time.sleep(120)  # a training step longer than the budget


def child_that_finishes(messages, returns):
    messages.put(("settings", {"kind": "finish"}))
    for i, value in enumerate(returns):
        messages.put(("point", dict(env_steps=i * 10, eval_time_s=0.1 * i, train_time_s=0.0, eval_return=value,
                                    eval_return_std=0.0)))
    messages.put(("done", None))


def child_that_fails(messages):
    messages.put(("error", "ValueError: bad setting"))


def child_that_writes_its_pid(messages, path):
    import os
    from pathlib import Path

    Path(path).write_text(str(os.getpid()))
    time.sleep(120)
