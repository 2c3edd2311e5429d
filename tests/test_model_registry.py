"""Model registry: lineage, promote/rollback history, gate verdicts on versions, faults (files gone,
results of another model, concurrent promotes, kill -9 during register, an old store migrated)."""

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from prefloop.cli import main
from prefloop.evaluate.results import model_entry, new_results, write_results
from prefloop.registry import RegistryError
from prefloop.registry import aliases as al
from prefloop.registry import versions as vs
from prefloop.registry.commands import register_model
from prefloop.store import Store, StoreError

SRC = str(Path(__file__).resolve().parents[1] / "src")


def fake_model(path: Path, seed: int, base: str | None = None, n_files: int = 1, size: int = 2000) -> Path:
    """A model directory as prefloop train leaves it: config, weights, a saved training config, a checkpoint."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "seed": seed}))
    for i in range(n_files):
        (path / f"model-{i}.safetensors").write_bytes(os.urandom(size))
    if base:
        (path / "prefloop_config.yaml").write_text(yaml.safe_dump({"model_name_or_path": base, "pref_beta": 0.1 * seed,
                                                                   "learning_rate": 5e-6}))
    (path / "checkpoint-10").mkdir()
    (path / "checkpoint-10" / "optimizer.pt").write_bytes(b"x" * 100)
    return path


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "reg.sqlite") as s:
        yield s


def test_lineage_chain_over_three_versions(tmp_path, store, capsys):
    sft = fake_model(tmp_path / "sft", 0)
    v1 = register_model(store, str(sft), "demo")
    r1 = fake_model(tmp_path / "round1", 1, base=str(sft))  # parent found from its training config
    v2 = register_model(store, str(r1), "demo")
    r2 = fake_model(tmp_path / "round2", 2, base=v2["path"])  # trained from the registry's copy of v2
    v3 = register_model(store, str(r2), "demo")
    assert [v["version"] for v in (v1, v2, v3)] == ["v1", "v2", "v3"]
    assert [vs.label(v) for v in vs.lineage(store, v3)] == ["demo:v3", "demo:v2", "demo:v1"]
    assert v3["meta"]["config"]["pref_beta"] == pytest.approx(0.2)
    # files are copied without checkpoints, under the registry's folder, and verified
    copied = Path(v3["path"])
    assert copied.parent == tmp_path / "reg.models" / "demo"
    assert sorted(p.name for p in copied.iterdir()) == ["config.json", "model-0.safetensors", "prefloop_config.yaml"]
    vs.check_files(v3)
    assert store.aliases("demo") == {"candidate": v3["id"]}
    assert main(["models", "diff", "v2", "v3", "--db", str(store.path), "--json"]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert diff["a_is"] == "ancestor" and diff["config"]["pref_beta"] == [pytest.approx(0.1), pytest.approx(0.2)]
    assert set(diff["config"]) == {"pref_beta", "model_name_or_path"}
    # an explicit parent and an own tag
    v4 = register_model(store, str(fake_model(tmp_path / "hotfix", 4)), "demo", parent="v1", version="v1-hotfix")
    assert vs.label(v4) == "demo:v1-hotfix" and v4["parent_id"] == v1["id"]
    with pytest.raises(RegistryError, match="demo:v1-hotfix is already registered"):
        register_model(store, str(fake_model(tmp_path / "again", 5)), "demo", version="v1-hotfix")
    assert len(store.model_versions("demo")) == 4
    assert not vs.leftovers(store, "demo")  # the failed register removed its copy


def test_promote_rollback_promote_again_keeps_the_history(tmp_path, store, capsys):
    ids = [register_model(store, str(fake_model(tmp_path / f"m{i}", i)), "demo")["id"] for i in range(3)]
    with pytest.raises(RegistryError, match="no previous version"):
        al.rollback(store, "demo")
    al.promote(store, "v1")
    time.sleep(0.01)
    t_v1 = al.parse_time(store.alias_events("demo", "champion")[-1]["created_at"])
    al.promote(store, "v2")
    al.promote(store, "demo:v3")
    assert al.rollback(store, "demo")["version"]["id"] == ids[1]
    assert al.rollback(store, "demo")["version"]["id"] == ids[0]
    with pytest.raises(RegistryError, match="no previous version"):
        al.rollback(store, "demo")
    al.promote(store, "v3")
    assert store.aliases("demo")["champion"] == ids[2]
    events = store.alias_events("demo", "champion")
    assert [(e["action"], e["version_id"]) for e in events] == [
        ("set", ids[0]), ("set", ids[1]), ("set", ids[2]), ("rollback", ids[1]), ("rollback", ids[0]),
        ("set", ids[2])]
    # after promoting v3 again, a rollback goes to v1 (what the champion was before that promote)
    assert al.rollback(store, "demo")["version"]["id"] == ids[0]
    # the past: at t_v1 only v1 was champion
    assert store.aliases("demo", until=t_v1)["champion"] == ids[0]
    assert main(["models", "list", "--db", str(store.path), "--at", t_v1, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {r["version"]: r["aliases"] for r in listed["versions"]} == {"v1": ["champion"], "v2": [], "v3": ["candidate"]}
    # status events follow the champion (promoted / retired / rejected), append-only
    assert [e["status"] for e in store.model_events(ids[1])] == ["candidate", "promoted", "retired", "promoted",
                                                                 "rejected"]
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store._conn.execute("DELETE FROM model_aliases")
    assert main(["models", "show", "v3", "--db", str(store.path)]) == 0
    shown = capsys.readouterr().out
    assert "champion set to this version" in shown and "champion rollback away" in shown


def _winrate(tmp_path, name, after, before, ci_low):
    metrics = {"win_rate": ci_low + 0.08, "win_rate_ci_low": ci_low, "raw_win_rate": ci_low + 0.08,
               "lc_win_rate": ci_low + 0.07, "n_prompts": 100, "judge_consistency": 0.9, "failed_judgment_rate": 0.0}
    res = new_results("winrate", models={"after": model_entry(path=after), "before": model_entry(path=before)},
                      metrics=metrics)
    return str(write_results(tmp_path / name, res))


def test_gate_on_the_registry_and_forced_promote(tmp_path, store, capsys):
    v1 = register_model(store, str(fake_model(tmp_path / "m1", 1)), "demo")
    al.promote(store, "v1")
    v2 = register_model(store, str(fake_model(tmp_path / "m2", 2)), "demo")
    db = ["--db", str(store.path), "--registry", "demo", "--version", "v2"]
    # results of another model than the one named: refused before judging
    wrong = _winrate(tmp_path, "wrong", str(tmp_path / "m1"), v1["path"], 0.6)
    assert main(["gate", "--candidate", wrong, *db]) == 2
    assert "models.after is path=" in capsys.readouterr().err
    assert not [e for e in store.model_events(v2["id"]) if e["status"] == "gate"]
    # a failing gate is recorded; promote then needs --force
    bad = _winrate(tmp_path, "bad", v2["path"], v1["path"], 0.45)
    assert main(["gate", "--candidate", bad, *db]) == 1
    assert "recorded: gate fail on demo:v2 against the champion demo:v1" in capsys.readouterr().out
    with pytest.raises(RegistryError, match="last gate verdict is 'fail'"):
        al.promote(store, "v2")
    assert main(["models", "promote", "v2", "--db", str(store.path)]) == 2
    assert store.aliases("demo")["champion"] == v1["id"]
    done = al.promote(store, "v2", force=True)
    assert done["forced"] and store.alias_events("demo", "champion")[-1]["forced"]
    al.rollback(store, "demo")
    # a passing gate (win rate measured with the original folder of v2 is accepted too)
    good = _winrate(tmp_path, "good", str(tmp_path / "m2"), v1["path"], 0.56)
    assert main(["gate", "--candidate", good, *db]) == 0
    assert vs.last_gate(store, v2)["note"] == "pass"
    assert vs.recorded_metrics(store, v2)["win_rate_ci_low"] == 0.56
    assert main(["models", "promote", "v2", "--db", str(store.path)]) == 0
    assert "demo@champion -> v2 (was v1); gate: pass" in capsys.readouterr().out


def test_promoting_a_version_whose_files_are_gone(tmp_path, store):
    v1 = register_model(store, str(fake_model(tmp_path / "m1", 1)), "demo")
    v2 = register_model(store, str(fake_model(tmp_path / "m2", 2)), "demo", copy=False)
    (Path(v1["path"]) / "model-0.safetensors").write_bytes(b"truncated")
    with pytest.raises(RegistryError, match="has 9 bytes, 2000 when registered"):
        al.promote(store, "v1")
    import shutil

    shutil.rmtree(tmp_path / "m2")
    with pytest.raises(RegistryError, match="its files at .* are gone"):
        al.promote(store, "v2")
    assert store.alias_events("demo", "champion") == []


def test_references_and_errors(tmp_path, store):
    register_model(store, str(fake_model(tmp_path / "a", 1)), "alpha")
    register_model(store, str(fake_model(tmp_path / "b", 2)), "beta")
    with pytest.raises(RegistryError, match="several models"):
        vs.resolve(store, "v1")
    assert vs.resolve(store, "beta:v1")["name"] == "beta"
    assert vs.resolve(store, "beta@candidate")["name"] == "beta"
    assert vs.resolve(store, "candidate", "alpha")["name"] == "alpha"
    with pytest.raises(RegistryError, match="alpha has no version or alias 'v9'; versions: v1"):
        vs.resolve(store, "alpha:v9")
    with pytest.raises(RegistryError, match="not a model directory"):
        register_model(store, str(tmp_path), "alpha")
    with pytest.raises(RegistryError, match="model name 'a:b' is not allowed"):
        register_model(store, str(tmp_path / "a"), "a:b")
    with pytest.raises(RegistryError, match="at .* is not an ISO-8601 time"):
        al.parse_time("yesterday")


def _promote_in_process(db, ref, barrier, out):
    with Store(db) as store:
        barrier.wait()
        try:
            al.promote(store, ref)
            out.put((ref, "ok"))
        except RegistryError as err:
            out.put((ref, str(err)))


def test_concurrent_promotes_are_serialized_and_checked(tmp_path, store):
    ids = [register_model(store, str(fake_model(tmp_path / f"m{i}", i)), "demo")["id"] for i in range(4)]
    al.promote(store, "v1")
    # a stale view is refused and nothing is written
    with pytest.raises(StoreError, match="moved while this command ran"):
        store.move_alias("demo", "champion", "set", ids[2], expect_version_id=ids[3])
    assert len(store.alias_events("demo", "champion")) == 1
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_promote_in_process, args=(str(store.path), ref, barrier, out))
             for ref in ("v2", "v3", "v4")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    results = dict(out.get(timeout=5) for _ in procs)
    succeeded = [ref for ref, r in results.items() if r == "ok"]
    assert succeeded, results
    assert all(r == "ok" or "moved while this command ran" in r for r in results.values()), results
    events = store.alias_events("demo", "champion")
    assert len(events) == 1 + len(succeeded)
    assert store.aliases("demo")["champion"] == events[-1]["version_id"]
    assert store.integrity_check() == "ok"


REGISTER = [sys.executable, "-m", "prefloop", "models", "register"]


def test_register_killed_mid_write_leaves_a_consistent_registry(tmp_path, store):
    big = fake_model(tmp_path / "big", 1, n_files=300, size=200_000)
    env = {**os.environ, "PYTHONPATH": SRC}
    root = vs.files_root(store) / "demo"
    proc = subprocess.Popen(REGISTER + [str(big), "--name", "demo", "--db", str(store.path)], env=env,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not any(root.glob(".incoming-*/model-*")):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)  # mid-copy: part of the files written
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert store.model_versions("demo") == [] and store.integrity_check() == "ok"
    assert [p.name.startswith(".incoming-") for p in vs.leftovers(store, "demo")] == [True]
    # the registry works on: the same model registers whole
    v = register_model(store, str(big), "demo")
    assert v["version"] == "v1" and len(v["meta"]["files"]) == 301
    vs.check_files(v)
    # killed at any later point: either no new version or a whole one
    for delay in (0.3, 0.8, 1.5):
        proc = subprocess.Popen(REGISTER + [str(big), "--name", "demo", "--db", str(store.path)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for version in store.model_versions("demo"):
            vs.check_files(version)
        assert store.integrity_check() == "ok"
    assert len(store.model_versions("demo")) >= 1


V1_SCHEMA_ROWS = [("sft", "/models/sft"), ("dpo", "/models/dpo"), ("sft", "/models/sft2")]


def test_a_schema_1_store_is_migrated(tmp_path):
    from prefloop import store as store_mod

    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in store_mod._split_sql(store_mod._SCHEMA + store_mod._append_only_triggers()):
        conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {store_mod.PREFLOOP_APP_ID}")
    conn.execute("INSERT INTO prefloop_meta(key, value) VALUES ('program', 'prefloop'), ('schema_version', '1')")
    for i, (name, p) in enumerate(V1_SCHEMA_ROWS, 1):
        conn.execute("INSERT INTO model_versions(name, path, created_at) VALUES (?, ?, '2026-01-01')", (name, p))
        conn.execute("INSERT INTO model_events(version_id, status, created_at) VALUES (?, 'candidate', '2026-01-01')",
                     (i,))
    conn.close()
    with Store(path) as store:
        assert [(v["name"], v["version"]) for v in store.model_versions()] == [("sft", "v1"), ("dpo", "v1"),
                                                                              ("sft", "v2")]
        assert [e["status"] for e in store.model_events(1)] == ["candidate"]
        store.set_model_status(1, "gate", "pass", {"rows": []})
        assert store.add_model_version("sft", "/models/sft3") == 4 and store.model_version(4)["version"] == "v3"
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            store._conn.execute("UPDATE model_events SET note = 'x'")
    with Store(path) as again:  # opening a migrated store changes nothing
        assert again._conn.execute("SELECT value FROM prefloop_meta WHERE key = 'schema_version'").fetchone()[0] == str(store_mod.SCHEMA_VERSION)


def test_train_registers_its_output_as_a_candidate(tmp_path, tiny_model_dir, monkeypatch):
    import prefloop

    db = tmp_path / "prefloop.sqlite"
    with Store(db) as store:
        base = register_model(store, str(tiny_model_dir), "tiny")
        al.promote(store, "v1")
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps({"conversations": [{"from": "human", "value": f"What is {i} plus {i}?"}],
                                        "chosen": f"It is {2 * i}.", "rejected": "no"}) + "\n" for i in range(10)))
    monkeypatch.chdir(tmp_path)
    metrics = prefloop.train({"model_name_or_path": base["path"], "dataset": str(data), "output_dir": "out",
                              "max_steps": 2, "val_size": 2, "report_to": "none", "sample_prompts": 0,
                              "save_strategy": "no", "logging_steps": 1, "registry": "tiny", "registry_db": str(db)})
    with Store(db) as store:
        v2 = store.model_versions("tiny")[-1]
        assert v2["version"] == "v2" and v2["parent_id"] == base["id"]
        assert v2["meta"]["config"]["registry"] == "tiny" and v2["meta"]["config"]["max_steps"] == 2
        assert v2["meta"]["source"] == str(tmp_path / "out")
        assert len(v2["meta"]["data"]["train"]) == 64 and len(v2["meta"]["data"]["validation"]) == 64
        assert v2["metrics"]["train_loss"] == metrics["train_loss"]
        assert "eval_rewards/accuracies" in v2["metrics"]
        assert store.aliases("tiny") == {"champion": base["id"], "candidate": v2["id"]}
        assert (Path(v2["path"]) / "adapter_config.json").is_file()
        assert not any(p.name.startswith("checkpoint-") for p in Path(v2["path"]).iterdir())


def test_mlflow_mirror_with_a_file_store(tmp_path, store, capsys):
    mlflow = pytest.importorskip("mlflow")
    uri = f"file://{tmp_path / 'mlruns'}"
    v1 = register_model(store, str(fake_model(tmp_path / "m1", 1)), "demo", metrics={"pref_accuracy": 0.7})
    register_model(store, str(fake_model(tmp_path / "m2", 2, base=v1["path"])), "demo")
    db = ["--db", str(store.path), "--mlflow", uri]
    assert main(["models", "promote", "v1", *db]) == 0
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("demo", "champion")
    assert champion.tags["prefloop.version"] == "v1" and champion.source == v1["path"]
    assert client.get_run(champion.run_id).data.metrics["pref_accuracy"] == 0.7
    assert client.get_model_version_by_alias("demo", "candidate").tags["prefloop.version"] == "v2"
    assert main(["models", "promote", "v2", *db]) == 0
    assert main(["models", "rollback", *db]) == 0
    assert main(["models", "mirror", *db]) == 0  # idempotent: no version logged twice
    assert client.get_model_version_by_alias("demo", "champion").tags["prefloop.version"] == "v1"
    assert len(client.search_model_versions("name = 'demo'")) == 2
    assert "mirrored demo into MLflow" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------
# MLflow registry semantics: numbering, aliases (one version each, reserved forms), re-registering the same files,
# a retried promote, paths with spaces, and the registration and its @candidate move being one transaction.

def test_version_numbers_increase_per_name_and_are_never_given_twice(tmp_path, store):
    import threading

    for i, name in enumerate(["alpha", "beta", "alpha", "alpha", "beta"]):
        register_model(store, str(fake_model(tmp_path / f"m{i}", i)), name)
    assert [(v["name"], v["version"]) for v in store.model_versions()] == [
        ("alpha", "v1"), ("beta", "v1"), ("alpha", "v2"), ("alpha", "v3"), ("beta", "v2")]
    register_model(store, str(fake_model(tmp_path / "tagged", 9)), "alpha", version="v10")
    assert register_model(store, str(fake_model(tmp_path / "next", 10)), "alpha")["version"] == "v11"
    # a version whose files were deleted keeps its number: the next one is never v11 again
    import shutil

    shutil.rmtree(store.model_versions("alpha")[-1]["path"])
    assert register_model(store, str(fake_model(tmp_path / "after", 11)), "alpha")["version"] == "v12"
    # registrations at the same moment (threads, each with its own connection) get distinct numbers
    got, errors = [], []

    def reg(i):
        try:
            got.append(register_model(store, str(tmp_path / f"m{i}"), "gamma")["version"])
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=reg, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(got) == [f"v{i}" for i in range(1, 6)]
    assert store.aliases("gamma")["candidate"] == store.model_versions("gamma")[-1]["id"]


def test_registering_the_same_files_twice_makes_two_versions_and_says_so(tmp_path, store, capsys):
    model = fake_model(tmp_path / "m", 1)
    v1 = register_model(store, str(model), "demo")
    capsys.readouterr()
    v2 = register_model(store, str(model), "demo")
    assert (v1["version"], v2["version"]) == ("v1", "v2") and v1["path"] != v2["path"]  # each its own copy
    assert v1["meta"]["fingerprint"] == v2["meta"]["fingerprint"]
    assert "demo:v2 holds the same files as demo:v1" in capsys.readouterr().out
    assert store.aliases("demo") == {"candidate": v2["id"]}
    vs.check_files(v1)
    vs.check_files(v2)
    al.promote(store, "v1")
    al.promote(store, "v2")  # the same files, another version: a move all the same
    assert [e["version_id"] for e in store.alias_events("demo", "champion")] == [v1["id"], v2["id"]]


def test_promoting_the_version_an_alias_already_points_to_changes_nothing(tmp_path, store, capsys):
    register_model(store, str(fake_model(tmp_path / "m1", 1)), "demo")
    db = ["--db", str(store.path)]
    assert main(["models", "promote", "v1", *db]) == 0
    assert main(["models", "promote", "v1", *db]) == 0  # a retried promote (a scheduler's retry) succeeds
    assert "demo@champion already points to v1; nothing changed" in capsys.readouterr().out
    assert len(store.alias_events("demo", "champion")) == 1
    assert [e["status"] for e in store.model_events(1)] == ["candidate", "promoted"]


def test_an_alias_points_at_one_version_and_its_name_cannot_be_mistaken_for_a_version(tmp_path, store, capsys):
    v1 = register_model(store, str(fake_model(tmp_path / "m1", 1)), "demo")
    v2 = register_model(store, str(fake_model(tmp_path / "m2", 2)), "demo", version="rc1")
    db = ["--db", str(store.path)]
    for alias, message in (("v2", "looks like a version number"), ("V7", "looks like a version number"),
                           ("rc1", "is the tag of a version"), ("my alias", "not allowed"), ("a@b", "not allowed"),
                           ("latest", "reserved")):
        assert main(["models", "promote", "v1", "--alias", alias, *db]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(RegistryError, match="is the name of an alias"):
        register_model(store, str(fake_model(tmp_path / "m3", 3)), "demo", version="champion")
    assert main(["models", "promote", "v1", "--alias", "staging", *db]) == 0
    assert main(["models", "promote", "rc1", "--alias", "staging", *db]) == 0  # moved, not added
    assert store.aliases("demo") == {"candidate": v2["id"], "staging": v2["id"]}
    assert [(e["action"], e["version_id"]) for e in store.alias_events("demo", "staging")] == [
        ("set", v1["id"]), ("set", v2["id"])]
    assert vs.resolve(store, "demo@staging")["id"] == vs.resolve(store, "staging", "demo")["id"] == v2["id"]


def test_the_registration_and_its_candidate_move_are_one_transaction(tmp_path, store, monkeypatch):
    v1 = register_model(store, str(fake_model(tmp_path / "m1", 1)), "demo")

    def dies_after_the_version_row(self, c, *args, **kwargs):  # killed between the two writes of old
        raise KeyboardInterrupt

    monkeypatch.setattr(Store, "_move_alias_in", dies_after_the_version_row)
    with pytest.raises(KeyboardInterrupt):
        register_model(store, str(fake_model(tmp_path / "m2", 2)), "demo")
    monkeypatch.undo()
    assert [v["version"] for v in store.model_versions("demo")] == ["v1"]  # no version without its @candidate
    assert store.aliases("demo") == {"candidate": v1["id"]}
    assert vs.leftovers(store, "demo") == []  # the copy was removed too
    assert register_model(store, str(tmp_path / "m2"), "demo")["version"] == "v2"


def test_paths_with_spaces(tmp_path, capsys):
    folder = tmp_path / "my models" / "run 1"
    model = fake_model(folder / "sft model", 1)
    (model / "tokenizer config.json").write_text("{}")
    db = str(tmp_path / "the store" / "reg db.sqlite")
    assert main(["models", "register", str(model), "--name", "demo", "--db", db]) == 0
    assert main(["models", "promote", "v1", "--db", db]) == 0
    capsys.readouterr()
    assert main(["models", "path", "demo@champion", "--db", db]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.is_dir() and (path / "tokenizer config.json").is_file() and " " in str(path)
    with Store(db) as store:
        assert vs.find_by_path(store, str(model))["version"] == "v1"  # lineage found from a path with spaces
        child = fake_model(folder / "dpo model", 2, base=str(model))
        assert register_model(store, str(child), "demo")["parent_id"] == 1
    mlflow = pytest.importorskip("mlflow")
    uri = f"file://{tmp_path / 'ml runs'}"
    assert main(["models", "mirror", "--db", db, "--mlflow", uri]) == 0
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.get_model_version_by_alias("demo", "champion").source == str(path)


def test_a_store_with_a_version_tagged_like_a_reserved_alias_can_still_register_and_promote(tmp_path, store, capsys):
    # before "candidate"/"champion" were reserved aliases, a version could carry one of them as its tag
    legacy = store.add_model_version("demo", str(fake_model(tmp_path / "m0", 0)), version="candidate")
    v2 = register_model(store, str(fake_model(tmp_path / "m2", 2)), "demo")  # sets the candidate alias
    assert store.aliases("demo")["candidate"] == v2["id"]
    assert vs.resolve(store, "demo@candidate")["id"] == v2["id"]
    assert vs.resolve(store, "demo:candidate")["id"] == legacy
    with pytest.raises(RegistryError, match="ambiguous"):
        vs.resolve(store, "candidate", "demo")
    with pytest.raises(RegistryError, match="is the name of an alias"):  # new tags like that stay refused
        register_model(store, str(fake_model(tmp_path / "m3", 3)), "demo", version="champion")
    db = ["--db", str(store.path)]
    assert main(["models", "promote", "demo@candidate", "--force", *db]) == 0
    assert store.aliases("demo")["champion"] == v2["id"]
