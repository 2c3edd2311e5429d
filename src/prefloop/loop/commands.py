"""`prefloop loop CONFIG [--step S]` and `prefloop loop status CONFIG`."""

from __future__ import annotations

from prefloop.errors import ConfigError
from prefloop.loop.config import load_loop_config
from prefloop.loop.steps import STEPS, UNTIL, LoopWaiting, run_loop
from prefloop.store import Store


def loop_command(target: str, config: str | None = None, step: str | None = None, until: str = "promoted") -> int:
    """`prefloop loop CONFIG` runs the open iteration to its end (exit 0 promoted or kept by the gate, 1 when the
    gate did not pass, 3 while the label step waits for people's votes); `--step S` runs one step;
    `prefloop loop status CONFIG` prints each iteration's steps."""
    if target == "status":
        if not config:
            raise ConfigError("prefloop loop status needs the loop config: prefloop loop status loop.yaml")
        return status_command(config)
    if config:
        raise ConfigError(f"unexpected argument {config!r}: run `prefloop loop CONFIG` or `prefloop loop status CONFIG`")
    if step is not None and step not in STEPS:
        raise ConfigError(f"--step must be one of {', '.join(STEPS)}, got {step!r}")
    if until not in UNTIL:
        raise ConfigError(f"--until must be one of {', '.join(UNTIL)}, got {until!r}")
    if step is not None and until != "promoted":
        raise ConfigError("--step runs one step and --until runs up to one; give one of them")
    cfg = load_loop_config(target)
    try:
        result = run_loop(cfg, step, until=until)
    except LoopWaiting as wait:
        print(f"waiting: {wait}")
        return 3
    gate = result["outputs"].get("gate")
    promote = result["outputs"].get("promote")
    if promote is None:
        if gate is not None and until == "gated" and gate.get("verdict") is not None:
            print(f"iteration {result['iteration']}: gate {gate['verdict']}; report: {gate['report']}; promote with "
                  f"`prefloop loop {target} --step promote`")
            return 0 if gate["verdict"] == "pass" else 1
        return 0
    if promote["promoted"]:
        print(f"iteration {result['iteration']}: promoted; {cfg.name}@champion is version id {promote['champion_id']}")
        return 0
    print(f"iteration {result['iteration']}: not promoted ({promote['why']})"
          + (f"; report: {promote['report']}" if promote.get("report") else ""))
    return 1 if "gate" in promote["why"] else 0


def status_command(config: str) -> int:
    """Print one line per iteration: its number, each step done (with its key output) or pending."""
    cfg = load_loop_config(config)
    with Store(cfg.store, option="store (loop.yaml)") as store:
        iterations = store.loop_iterations(cfg.name)
        champ = store.aliases(cfg.name).get("champion")
        print(f"loop {cfg.name} (store {cfg.store}; champion: "
              + (f"{store.model_version(champ)['version']})" if champ else "none)"))
        if not iterations:
            print("no iteration yet: run `prefloop loop " + config + "`")
        for it in iterations:
            steps = it["steps"]
            parts = [f"{s}={_short(s, steps[s]['outputs'])}" if s in steps else
                     f"{s}=waiting for votes ({len(steps['label-loaded']['outputs']['items'])} items)"
                     if s == "label" and "label-loaded" in steps else f"{s}=pending" for s in STEPS]
            state = "finished" if "promote" in steps else "open"
            print(f"iteration {it['number']} ({state}, started {it['created_at'][:19]}): " + " ".join(parts))
    return 0


def _short(step: str, out: dict) -> str:
    key = {"collect": "interactions", "sample": "prompts", "generate": "prompts", "label": "pairs",
           "pairs": "new_pairs", "train": "version", "eval": "win_rate", "gate": "verdict",
           "promote": "promoted"}[step]
    value = out.get(key)
    return f"{value:.3f}" if isinstance(value, float) else str(value)
