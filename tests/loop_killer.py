"""Run one `prefloop loop` iteration in this process and SIGKILL it at a chosen point (used by test_loop_kill.py).

    python loop_killer.py SPEC LOOP.yaml

SPEC says where the process kills itself with `os.kill(os.getpid(), SIGKILL)` (no exception, no `finally`, no
flush: what a `kill -9` or a power cut leaves behind):

    hook:STEP:PHASE          the loop's own hook(step, phase) at a step boundary (phase "start" or "before_record")
    lines:PATTERN:N          a watcher thread, as soon as a file matching the glob PATTERN has N complete lines
                             (in the middle of a step that appends a cache: generate, judge, eval answers/judgments)
    open:TEXT:N              the Nth `open` of a path containing TEXT (audit hook: e.g. in the middle of the
                             registry's copy of a trained model)
    call:MODULE:ATTR:N       just before the Nth call of MODULE.ATTR (e.g. prefloop.store:Store.move_alias:1:
                             a version registered, its alias not yet set)

Nothing in prefloop knows about this script; if the run ends without reaching SPEC, the exit code is 0
and the test fails (the process should have died).
"""

import functools
import glob
import importlib
import os
import signal
import sys
import threading
import time


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def counter(n):
    state = {"seen": 0}

    def hit():
        state["seen"] += 1
        return state["seen"] >= n
    return hit


def install(spec):
    kind, _, rest = spec.partition(":")
    if kind == "hook":
        step, phase = rest.split(":")
        return lambda s, p: die() if (s, p) == (step, phase) else None
    if kind == "lines":
        pattern, n = rest.rsplit(":", 1)

        def watch():
            while True:
                for path in glob.glob(pattern):
                    try:
                        with open(path, "rb") as f:
                            if f.read().count(b"\n") >= int(n):
                                die()
                    except OSError:
                        pass
                time.sleep(0.001)
        sys.setswitchinterval(1e-4)  # the watcher gets the GIL within 0.1 ms, not Python's default 5 ms
        threading.Thread(target=watch, daemon=True).start()
    elif kind == "open":
        text, n = rest.rsplit(":", 1)
        hit = counter(int(n))

        def audit(event, args):
            if event == "open" and args and isinstance(args[0], str) and text in args[0] and hit():
                die()
        sys.addaudithook(audit)
    elif kind == "call":
        module, attr, n = rest.split(":")
        owner = importlib.import_module(module)
        *path, name = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        original, hit = getattr(owner, name), counter(int(n))

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            if hit():
                die()
            return original(*args, **kwargs)
        setattr(owner, name, wrapper)
    else:
        raise SystemExit(f"unknown kill spec {spec!r}")
    return None


if __name__ == "__main__":
    from prefloop.loop.config import load_loop_config
    from prefloop.loop.steps import run_loop

    hook = install(sys.argv[1])
    run_loop(load_loop_config(sys.argv[2]), hook=hook)
