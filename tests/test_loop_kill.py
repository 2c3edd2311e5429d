"""`prefloop loop` killed with SIGKILL (a real `kill -9`, in a real subprocess) at step boundaries and in the
middle of long steps, then rerun with `prefloop loop`: the end state equals an uninterrupted run's.

The loop runs on the tiny model against the scripted judge endpoint of test_judge (a real HTTP server, slowed
so the kill lands inside label and eval). tests/loop_killer.py runs the iteration and kills itself at the
point named by a spec; nothing in prefloop knows about it. One chain of kills goes through one iteration in
order (each run resumes what the last left and dies further on), which keeps the run time of the test low.
"""

import difflib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from prefloop.loop.steps import STEPS
from prefloop.registry import versions as vs
from prefloop.serve.background import BackgroundServer
from prefloop.store import Store
from test_judge import prefers_longer, scripted_judge_app
from test_loop import PASS_RULES, _setup

SRC = str(Path(__file__).resolve().parents[1] / "src")
KILLER = str(Path(__file__).resolve().parent / "loop_killer.py")
ITER = "prefloop.sqlite.loop/tiny/iter-0001"

# (kill spec, the step it lands in): in iteration order; DIR is the test's folder
KILLS = [
    ("hook:collect:before_record", "collect"),
    (f"lines:DIR/{ITER}/candidates.jsonl:1", "generate"),           # one prompt's K answers written, not all
    ("hook:generate:before_record", "generate"),
    (f"lines:DIR/{ITER}/judged.judge-cache.jsonl:2", "label"),       # two judgments cached, more to come
    ("hook:label:before_record", "label"),
    ("hook:pairs:before_record", "pairs"),
    ("open:.incoming-:2", "train"),                                   # trained; the registry's copy half done
    ("call:prefloop.store:Store._move_alias_in:1", "train"),          # in the registration's transaction, its
                                                                      # @candidate not yet written: neither stays
    (f"lines:DIR/{ITER}/eval/answers/*.jsonl:2", "eval"),            # answers half done (identical answers are
                                                                      # ties the judge is not asked about, so
                                                                      # the judgments may be too few to cut)
    ("hook:gate:before_record", "gate"),                              # the gate event written, step not recorded
    ("hook:promote:before_record", "promote"),                        # the alias moved, step not recorded
]


def _env():
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return env


def _prefloop_loop(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefloop", "loop", str(folder / "loop.yaml")], env=_env(),
                          capture_output=True, text=True, timeout=300)


def _prepare(folder: Path, tiny_model_dir, judge_url) -> None:
    folder.mkdir()
    _setup(folder, tiny_model_dir, judge_url, PASS_RULES)
    cfg = yaml.safe_load((folder / "loop.yaml").read_text())
    cfg["generate"]["batch_size"] = 1  # one prompt at a time: the kill lands between two prompts' answers
    cfg["label"]["concurrency"] = 1    # one judgment at a time: the kill lands between two judgments
    (folder / "loop.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def _files(folder: Path) -> dict[str, str]:
    """The iteration's data files (not logs and reports that carry times)."""
    it = folder / ITER
    out = {}
    for name in ("prompts.jsonl", "candidates.jsonl", "judged.jsonl", "pairs.new.jsonl", "pairs.jsonl",
                 "gate-report.md", "eval/answers/after.jsonl", "eval/answers/before.jsonl"):
        out[name] = (it / name).read_text(encoding="utf-8")
    results = json.loads((it / "eval" / "results.json").read_text())
    out["eval/results.json:metrics"] = json.dumps(results["metrics"], sort_keys=True)
    judgments = {}  # the cache, by key: a resumed run appends in another order
    for f in sorted((it / "eval" / "judgments").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            record = json.loads(line)
            judgments[record["key"]] = record["value"]
    out["eval/judgments"] = json.dumps(judgments, sort_keys=True)
    return out


def _weights(path: Path) -> str:
    """A hash of a version's weight tensors (its other files name the run's folders)."""
    from safetensors.numpy import load_file

    digest = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")):
        for name, array in sorted(load_file(str(f)).items()):
            digest.update(name.encode() + array.tobytes())
    return digest.hexdigest()


def _store_state(folder: Path) -> dict:
    """Versions with parents and statuses, every status/gate event, aliases and each alias's moves, the
    iteration's recorded steps (inputs and outputs), label items and votes."""
    with Store(folder / "prefloop.sqlite") as store:
        tags = {v["id"]: v["version"] for v in store.model_versions("tiny")}
        versions = [(v["version"], tags.get(v["parent_id"]), v["status"], _weights(Path(v["path"])))
                    for v in store.model_versions("tiny")]
        events = [(tags[e["version_id"]], e["status"], e["note"]) for e in store.model_events()]
        moves = [(e["alias"], e["action"], tags.get(e["version_id"])) for e in store.alias_events("tiny")]
        its = store.loop_iterations("tiny")
        steps = {s: {"inputs": r["inputs"], "outputs": {k: v for k, v in r["outputs"].items() if k != "resumed"}}
                 for s, r in its[-1]["steps"].items()}
        return {"versions": versions, "events": events, "aliases": {a: tags[i] for a, i in
                                                                   store.aliases("tiny").items()},
                "alias_moves": moves, "iterations": len(its), "steps": steps,
                "label_items": len(store.label_items()), "votes": len(store.active_votes())}


def _normalized(folder: Path) -> str:
    """The state as text, with the folder and the registry's random folder names of versions made neutral."""
    text = json.dumps({"store": _store_state(folder), "files": _files(folder)}, sort_keys=True, indent=1)
    with Store(folder / "prefloop.sqlite") as store:
        for v in store.model_versions("tiny"):  # the registry's folder of a version (and a model's name) is random
            text = text.replace(Path(v["path"]).name, v["version"])
    return text.replace(str(folder), "DIR")


@pytest.fixture
def slow_judge():
    """The scripted judge (prefers the longer answer), 20 ms a judgment, so a kill can land between two."""
    def policy(messages):
        time.sleep(0.02)
        return prefers_longer(messages)

    app, _ = scripted_judge_app(policy)
    with BackgroundServer(app) as server:
        yield server


def test_kill_9_at_each_step_boundary_and_inside_long_steps_then_rerun_equals_an_uninterrupted_run(
        tmp_path, tiny_model_dir, slow_judge):
    plain = tmp_path / "plain"
    _prepare(plain, tiny_model_dir, slow_judge.url)
    run = _prefloop_loop(plain)
    assert run.returncode == 0, run.stderr[-3000:]
    uninterrupted = _normalized(plain)

    killed = tmp_path / "killed"
    _prepare(killed, tiny_model_dir, slow_judge.url)
    for spec, step in KILLS:
        spec = spec.replace("DIR", str(killed))
        proc = subprocess.run([sys.executable, KILLER, spec, str(killed / "loop.yaml")], env=_env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == -signal.SIGKILL, (spec, proc.returncode, proc.stderr[-3000:])
        started = [line for line in proc.stderr.splitlines() if line.startswith("prefloop loop: iteration 1: ")
                   and line.endswith(" ...")]
        assert started[-1] == f"prefloop loop: iteration 1: {step} ...", (spec, proc.stderr[-2000:])
        with Store(killed / "prefloop.sqlite") as store:
            done = store.loop_iterations("tiny")[0]["steps"]
            assert step not in done, (spec, sorted(done))  # died inside the step, before it was recorded
            assert all(s in done for s in STEPS[: STEPS.index(step)]), (spec, sorted(done))
    run = _prefloop_loop(killed)  # the plain command, run again after the last kill
    assert run.returncode == 0, run.stderr[-3000:]
    assert "promote already done" not in run.stderr
    after_kills = _normalized(killed)
    assert after_kills == uninterrupted, "\n".join(difflib.unified_diff(
        uninterrupted.splitlines(), after_kills.splitlines(), "uninterrupted", "killed and rerun", lineterm=""))

    state = _store_state(killed)
    assert [v[:2] for v in state["versions"]] == [("v1", None), ("v2", "v1")]  # no second candidate
    assert state["aliases"] == {"candidate": "v2", "champion": "v2"}
    assert [m for m in state["alias_moves"] if m[0] == "champion"] == [("champion", "set", "v1"),
                                                                      ("champion", "set", "v2")]  # moved once
    pairs = [json.loads(x) for x in (killed / ITER / "pairs.jsonl").read_text().splitlines()]
    assert len({p["id"] for p in pairs}) == len(pairs) == state["steps"]["pairs"]["outputs"]["new_pairs"]
    for name in ("candidates.jsonl", "judged.judge-cache.jsonl"):  # no line twice, none cut short
        lines = (killed / ITER / name).read_text().splitlines()
        assert len(lines) == len(set(lines)) and all(json.loads(x) for x in lines)
    with Store(killed / "prefloop.sqlite") as store:
        # the copies the kills cut short are reported by `prefloop models list` as leftovers: the one cut mid-copy
        # (.incoming-*) and the whole one whose registration (row and @candidate, one transaction) the kill rolled
        # back; no version lost its files
        assert sorted(p.name.startswith(vs.INCOMING) for p in vs.leftovers(store, "tiny")) == [False, True]
        for v in store.model_versions("tiny")[1:]:
            assert Path(v["path"]).is_dir()
    assert not (killed / ITER / "pairs.jsonl.tmp").exists()
