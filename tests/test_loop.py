"""`prefloop loop`: a whole iteration on a tiny model with a scripted judge endpoint (a real HTTP server),
resuming after a kill inside a step, a failing gate, feedback-derived pairs, PII scrubbing, loop.yaml errors."""

import json
import os

import pytest
import yaml

from prefloop.cli import main
from prefloop.errors import ConfigError
from prefloop.loop.config import load_loop_config
from prefloop.loop.feedback_pairs import feedback_pairs
from prefloop.loop.scrub import Scrubber
from prefloop.loop.steps import STEPS, run_loop
from prefloop.registry import aliases as al
from prefloop.registry.commands import register_model
from prefloop.serve.background import BackgroundServer
from prefloop.store import Store
from test_judge import prefers_longer, scripted_judge_app

QUESTIONS = ["What is the capital of France?", "Explain gravity to a child.", "Write a haiku about rain.",
             "How do I reverse a list in Python?", "Name three prime numbers.", "Why is the sky blue?"]
PASS_RULES = {"rules": [{"name": "measured", "metric": "n_prompts", "at_least": 1, "required": True,
                         "why": "the eval ran"}]}
FAIL_RULES = {"rules": [{"name": "beats_champion", "metric": "win_rate", "above": 0.99, "required": True,
                         "why": "a bar no candidate clears"}]}


class Killed(Exception):
    pass


def _setup(tmp_path, tiny_model_dir, judge_url, rules):
    db = tmp_path / "prefloop.sqlite"
    with Store(db) as store:
        v1 = register_model(store, str(tiny_model_dir), "tiny")
        al.promote(store, "v1", "tiny")
        ids = []
        for i, q in enumerate(QUESTIONS):  # what `prefloop serve --db` logs, by the champion that answered
            ids.append(store.log_interaction(f"c{i // 2}", "tiny:v1", [{"role": "user", "content": q}], "ok"))
        ids.append(store.log_interaction("c9", "tiny:v1", [{"role": "user", "content": QUESTIONS[0].upper()}], "ok"))
        other = store.log_interaction("c0", "tiny:v1", [{"role": "user", "content": QUESTIONS[0]}],
                                      "Paris is the capital of France.")
        store.add_feedback(ids[0], "choice", "other", annotator="u1", other_interaction_id=other)
        store.add_feedback(ids[1], "thumbs", "down", annotator="u2")
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(
        {"cutoff_len": 64, "max_steps": 1, "per_device_train_batch_size": 2, "report_to": "none",
         "save_strategy": "no", "sample_prompts": 0, "length_probe_prompts": 0, "logging_steps": 1, "val_size": 0}))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"id": f"e{i}", "prompt": q}) + "\n"
                                                 for i, q in enumerate(QUESTIONS[:4])))
    (tmp_path / "gate.yaml").write_text(yaml.safe_dump(rules))
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump({
        "name": "tiny", "store": "prefloop.sqlite",
        "sample": {"strategy": "feedback_first", "size": 4, "per_conversation": 1},
        "generate": {"k": 3, "temperature": 0.9, "max_new_tokens": 8},
        "label": {"judge": judge_url},
        "train": {"config": "train.yaml", "replay_share": 0.5},
        "eval": {"prompts": "eval.jsonl", "max_new_tokens": 8, "resamples": 50},
        "gate": {"rules": "gate.yaml"}}, sort_keys=False))
    return db, v1


def _state(db):
    """Everything an iteration leaves in the store, without ids/times that differ between runs."""
    with Store(db) as store:
        versions = [(v["version"], v["parent_id"], v["status"]) for v in store.model_versions("tiny")]
        its = store.loop_iterations("tiny")
        steps = {s: {k: v for k, v in rec["outputs"].items() if k not in ("resumed", "report", "results")}
                 for s, rec in its[-1]["steps"].items()}
        return {"versions": versions, "iterations": len(its), "steps": steps, "aliases": store.aliases("tiny")}


@pytest.fixture
def judge():
    app, requests = scripted_judge_app(prefers_longer)
    with BackgroundServer(app) as server:
        yield server


def test_one_iteration_ends_in_one_new_version_and_a_kill_inside_train_resumes(tmp_path, tiny_model_dir, judge,
                                                                               capsys):
    db, v1 = _setup(tmp_path, tiny_model_dir, judge.url, PASS_RULES)
    cfg = load_loop_config(tmp_path / "loop.yaml")

    def kill_after_register(step, phase):  # the candidate is registered, the step not yet recorded
        if step == "train" and phase == "before_record":
            raise Killed()

    with pytest.raises(Killed):
        run_loop(cfg, hook=kill_after_register)
    with Store(db) as store:
        assert [v["version"] for v in store.model_versions("tiny")] == ["v1", "v2"]
        assert set(store.loop_iterations("tiny")[0]["steps"]) == set(STEPS[:5])
    assert main(["loop", str(tmp_path / "loop.yaml")]) == 0
    state = _state(db)
    assert state["iterations"] == 1 and set(state["steps"]) == set(STEPS)
    assert [v[0] for v in state["versions"]] == ["v1", "v2"]  # exactly one new version, no second candidate
    assert state["versions"][1][1] == v1["id"]  # parent: the champion it was trained from
    assert state["aliases"]["champion"] == state["steps"]["promote"]["champion_id"] != v1["id"]
    s = state["steps"]
    # flagged first (8: the chosen answer of an A/B choice, newest), then newest first; one per conversation
    # (2 and 5 and 3 capped), near-duplicates collapsed (1 repeats 8's prompt, 7 is it in upper case)
    prompts = [json.loads(x) for x in open(s["sample"]["file"])]
    assert [p["interaction_id"] for p in prompts] == [8, 6, 4] and s["sample"]["flagged"] == 1
    assert s["sample"]["skipped"] == {"forgotten_conversation": 0, "duplicate_prompt": 2, "conversation_cap": 3,
                                      "over_size": 0}
    assert s["pairs"]["by_source"].get("feedback:choice") == 1
    assert s["gate"]["verdict"] == "pass" and s["promote"]["promoted"] is True
    # the next week: new interactions; the champion is now a LoRA adapter (v2), continued and used as reference;
    # a kill inside promote (after the alias moved, before the step was recorded) resumes without a second move
    with Store(db) as store:
        for i, q in enumerate(QUESTIONS[2:]):
            store.log_interaction(f"w2-{i}", "tiny:v2", [{"role": "user", "content": q + " Briefly."}], "ok")

    def kill_in_promote(step, phase):
        if step == "promote" and phase == "before_record":
            raise Killed()

    with pytest.raises(Killed):
        run_loop(cfg, hook=kill_in_promote)
    assert main(["loop", str(tmp_path / "loop.yaml")]) == 0
    state = _state(db)
    assert state["iterations"] == 2 and [v[:2] for v in state["versions"]] == [("v1", None), ("v2", 1), ("v3", 2)]
    assert state["steps"]["collect"]["interactions"] == 4 and state["steps"]["promote"]["promoted"] is True
    p2 = state["steps"]["pairs"]  # replay_share 0.5: as many older pairs as new ones, none of them new again
    assert p2["replay_pairs"] == min(p2["new_pairs"], p2["older_pairs_available"]) > 0
    train_ids = [json.loads(x)["id"] for x in open(p2["file"])]
    assert len(train_ids) == len(set(train_ids)) == p2["new_pairs"] + p2["replay_pairs"]
    with Store(db) as store:
        assert store.aliases("tiny")["champion"] == 3
        assert len([e for e in store.alias_events("tiny", "champion")]) == 3  # v1, v2, v3: no double move
        v3 = store.model_version(3)
        assert v3["meta"]["config"]["adapter_name_or_path"] == store.model_version(2)["path"]
    capsys.readouterr()
    assert main(["loop", "status", str(tmp_path / "loop.yaml")]) == 0
    out = capsys.readouterr().out
    assert "champion: v3" in out and "iteration 2 (finished" in out and "train=v3" in out and "gate=pass" in out


def test_a_kill_in_each_step_resumes_to_the_state_of_an_uninterrupted_run(tmp_path, tiny_model_dir, judge):
    (tmp_path / "plain").mkdir()
    plain_db, _ = _setup(tmp_path / "plain", tiny_model_dir, judge.url, FAIL_RULES)
    assert main(["loop", str(tmp_path / "plain" / "loop.yaml")]) == 1
    uninterrupted = json.dumps(_state(plain_db), sort_keys=True).replace(str(tmp_path / "plain"), "DIR")
    tmp_path = tmp_path / "killed"
    tmp_path.mkdir()
    db, _ = _setup(tmp_path, tiny_model_dir, judge.url, FAIL_RULES)
    cfg = load_loop_config(tmp_path / "loop.yaml")
    for kill_at in ("collect", "sample", "generate", "label", "pairs", "eval", "gate"):
        def hook(step, phase, kill_at=kill_at):
            if step == kill_at and phase == "before_record":
                raise Killed()
        with pytest.raises(Killed):
            run_loop(cfg, hook=hook)
    assert main(["loop", str(tmp_path / "loop.yaml")]) == 1  # the gate fails: exit 1
    state = _state(db)
    assert json.dumps(state, sort_keys=True).replace(str(tmp_path), "DIR") == uninterrupted
    assert [v[0] for v in state["versions"]] == ["v1", "v2"] and state["iterations"] == 1
    # a failing gate keeps the champion and writes a report naming the failed rule
    assert state["aliases"]["champion"] == 1
    promote = state["steps"]["promote"]
    assert promote["promoted"] is False and promote["failed_rules"] == ["beats_champion"]
    report = (tmp_path / "prefloop.sqlite.loop" / "tiny" / "iter-0001" / "gate-report.md").read_text()
    assert "beats_champion" in report and "Prompts the candidate lost" in report
    with Store(db) as store:
        assert store.model_version(state["aliases"]["candidate"])["status"] == "candidate"
        pairs = [json.loads(x) for x in open(store.loop_iterations("tiny")[0]["steps"]["pairs"]["outputs"]["file"])]
        assert len({p["id"] for p in pairs}) == len(pairs)  # no pair twice


def test_feedback_pairs_on_a_hand_made_table():
    q = [{"role": "user", "content": "2+2?"}]
    r = [{"role": "user", "content": "Capital of Italy?"}]
    inter = {1: {"id": 1, "messages": q, "response": "4"}, 2: {"id": 2, "messages": q, "response": "5"},
             3: {"id": 3, "messages": q, "response": "four"}, 4: {"id": 4, "messages": r, "response": "Rome"},
             5: {"id": 5, "messages": r, "response": "Milan"}, 6: {"id": 6, "messages": r, "response": "Turin"}}

    def fb(i, kind, value, other=None, who="a"):
        return {"id": i, "interaction_id": value[0], "kind": kind, "value": value[1], "annotator": who,
                "other_interaction_id": other}

    rows = [fb(1, "choice", (1, "this"), other=2),          # 4 > 5
            fb(2, "choice", (2, 1), other=1, who="b"),      # 4 > 5 again (by id): a duplicate
            fb(3, "thumbs", (3, "up")), fb(4, "thumbs", (2, "down")),   # four > 5
            fb(5, "choice", (4, "this"), other=5), fb(6, "choice", (5, "this"), other=4),  # conflicting
            fb(7, "thumbs", (6, "down")),                    # Turin: no up-vote; judged best "Rome"
            fb(8, "choice", (1, "this"), other=4),           # different prompts
            fb(9, "thumbs", (99, "down"))]                   # a missing interaction
    pairs, skipped = feedback_pairs(inter, rows, judged_best={})
    got = sorted((p["chosen"], p["rejected"], p["source"]) for p in pairs)
    assert got == [("4", "5", "feedback:choice"), ("four", "5", "feedback:thumbs")]
    assert dict(skipped) == {"duplicate": 1, "conflicting": 2, "no_better_answer": 1, "different_prompts": 1,
                             "missing_interaction": 1}
    assert next(p for p in pairs if p["chosen"] == "4")["provenance"]["feedback_ids"] == [1, 2]
    from prefloop.prompts import prompt_key
    pairs, skipped = feedback_pairs(inter, rows[6:7], judged_best={prompt_key(r): "Rome"})
    assert [(p["chosen"], p["rejected"], p["source"]) for p in pairs] == [
        ("Rome", "Turin", "feedback:thumbs_down_vs_judged_best")]
    assert pairs[0]["conversations"] == [{"from": "human", "value": "Capital of Italy?"}]



def test_a_choice_naming_an_interaction_id_as_text_is_not_read_as_the_other(tmp_path):
    """POST /v1/feedback accepts the preferred interaction as 12 or "12"; "12" was read as "the other one",
    swapping chosen and rejected. Through the real store and serve's feedback handler."""
    from prefloop.serve.feedback import record_feedback

    q = [{"role": "user", "content": "2+2?"}]
    with Store(tmp_path / "db.sqlite") as store:
        good, bad = store.log_interaction("c", "m", q, "4"), store.log_interaction("c", "m", q, "5")
        for value in (good, str(good), "this"):
            record_feedback(store, {"interaction_id": good, "other_interaction_id": bad, "value": value})
        for value in (good, str(good), "other"):
            record_feedback(store, {"interaction_id": bad, "other_interaction_id": good, "value": value})
        for value in (True, "both"):
            with pytest.raises(Exception, match="value"):
                record_feedback(store, {"interaction_id": good, "other_interaction_id": bad, "value": value})
        with pytest.raises(Exception, match="two different interactions"):
            store.add_feedback(good, "choice", "this", other_interaction_id=good)
        inter = {i["id"]: i for i in store.interactions()}
        rows = store.feedback()
    assert len(rows) == 6
    pairs, skipped = feedback_pairs(inter, rows)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("4", "5")]
    assert dict(skipped) == {"duplicate": 5}

def test_pii_is_scrubbed_and_counted():
    s = Scrubber()
    text = ("Mail me at jane.doe@example.com or call +1 415-555-0132; key sk-proj-abcdefghijklmnopqrstuv, "
            "token ghp_abcdefghijklmnopqrstuvwxyz012345. Version 3.11 of 2026.")
    out = s.text(text)
    assert out == ("Mail me at [EMAIL] or call [PHONE]; key [SECRET], token [SECRET]. Version 3.11 of 2026.")
    assert dict(s.counts) == {"SECRET": 2, "EMAIL": 1, "PHONE": 1}
    hooked = Scrubber(hook="test_loop:_upper_names")
    assert hooked.text("ask Bob") == "ask [NAME]" and hooked.counts["HOOK"] == 1


def _upper_names(text):
    return text.replace("Bob", "[NAME]")


@pytest.mark.parametrize("change, message", [
    ({"smaple": {}}, "smaple: unknown key (did you mean 'sample'?)"),
    ({"generate": {"k": 1}}, "generate.k: must be at least 2"),
    ({"generate": {"k": 4, "temperature": 0}}, "generate.temperature: 0 (greedy) makes the K candidates identical"),
    ({"label": {"mode": "reward_models"}}, "label.mode: must be one of judge, reward_model, human, human_then_judge"),
    ({"label": {"mode": "reward_model"}}, "label.reward_model: mode reward_model needs label.reward_model: a local "
                                          "AutoModelForSequenceClassification directory"),
    ({"label": {"mode": "reward_model", "reward_model": "no-such-dir"}}, "no-such-dir is not a directory"),
    ({"label": {"reward_model": "rm"}}, "label.reward_model: is used only with label.mode reward_model"),
    ({"label": {"mode": "human", "pairing": "best"}}, "label.pairing: must be best_worst (the best answer against"),
    ({"label": {"mode": "human", "items_per_prompt": 2}}, "label.items_per_prompt: must be at least generate.k - 1 = 3"),
    ({"label": {"mode": "reward_model", "reward_model": ".", "precision": "int4"}},
     "label.precision: must be one of auto, fp32, bf16, fp16"),
    ({"train": {"config": "train.yaml", "replay_share": 1.0}}, "train.replay_share: must be in [0, 1)"),
    ({"train": {"config": "train.yaml", "overrides": {"output_dir": "x"}}}, "output_dir are set by the loop"),
    ({"train": {"config": "train.yaml", "overrides": {"max_step": 3}}},
     "line 6: train.overrides: unknown training key 'max_step' (did you mean 'max_steps'?)"),
    ({"sample": {"size": "many"}}, "sample.size: must be int, got 'many'"),
    ({"label": {"template_file": "judge.txt"}}, "label.template_file: "),
    ({"eval": {"judge_max_tokens": 0}}, "eval.judge_max_tokens: must be at least 1"),
])
def test_loop_yaml_errors_are_located(tmp_path, change, message, capsys):
    (tmp_path / "train.yaml").write_text("max_steps: 1\n")
    (tmp_path / "eval.jsonl").write_text('{"prompt": "hi"}\n')
    base = {"name": "tiny", "label": {"judge": "http://127.0.0.1:1/v1"}, "train": {"config": "train.yaml"},
            "eval": {"prompts": "eval.jsonl"}}
    for key, value in change.items():
        base[key] = {**base.get(key, {}), **value} if key in base else value
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    assert main(["loop", str(tmp_path / "loop.yaml")]) == 2
    err = capsys.readouterr().err
    assert message in err and str(tmp_path / "loop.yaml") in err
    assert not (tmp_path / "prefloop.sqlite").exists()  # nothing ran


def test_loop_overrides_take_llama_factory_keys_and_training_translates_or_refuses_them(tmp_path):
    """train.overrides accepts what a training config accepts: LLaMA-Factory's names are read by the training
    config's translation (config_lf) when the iteration trains, not refused by the loop as unknown keys."""
    from prefloop.config import load_config

    (tmp_path / "train.yaml").write_text("max_steps: 1\n")
    (tmp_path / "eval.jsonl").write_text('{"prompt": "hi"}\n')
    overrides = {"evaluation_strategy": "no", "disable_gradient_checkpointing": True, "flash_attn": "auto",
                 "quantization_bit": 4}
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump({
        "name": "tiny", "label": {"judge": "http://127.0.0.1:1/v1"},
        "train": {"config": "train.yaml", "overrides": overrides}, "eval": {"prompts": "eval.jsonl"}}))
    cfg = load_loop_config(tmp_path / "loop.yaml")
    assert cfg.train["overrides"] == overrides
    (tmp_path / "champion").mkdir()
    model = {"model_name_or_path": str(tmp_path / "champion"), "dataset": "pairs.jsonl",  # what the loop sets
             "output_dir": str(tmp_path / "out")}
    ok = {k: v for k, v in overrides.items() if k != "quantization_bit"}
    trained = load_config(str(tmp_path / "train.yaml"), {**ok, **model})  # as the train step loads it
    assert trained.eval_strategy == "no" and trained.gradient_checkpointing is False
    with pytest.raises(ConfigError, match="quantization_bit"):  # a setting prefloop lacks is refused, not lost
        load_config(str(tmp_path / "train.yaml"), {**overrides, **model})


def test_forget_removes_the_text_everywhere_and_later_iterations_never_see_it(tmp_path, tiny_model_dir, judge):
    db, _ = _setup(tmp_path, tiny_model_dir, judge.url, FAIL_RULES)
    cfg = load_loop_config(tmp_path / "loop.yaml")
    for step in STEPS[:5]:  # collect .. pairs
        run_loop(cfg, step)
    workdir = tmp_path / "prefloop.sqlite.loop" / "tiny"
    secret = "Why is the sky blue?"
    with Store(db) as store:  # a label item made from it (as the human modes make them)
        store.add_label_item([{"role": "user", "content": secret}], "Rayleigh scattering.", "Magic.", origin="x")
        store.add_label_item([{"role": "user", "content": "unrelated"}], "a", "b", origin="x")  # conversation c2 (interactions 5 and 6); 6 was sampled
    assert secret in (workdir / "iter-0001" / "prompts.jsonl").read_text()
    assert main(["forget", "--conversation", "c2", "--loop", str(tmp_path / "loop.yaml")]) == 0
    for f in workdir.rglob("*.jsonl"):
        assert secret not in f.read_text(), f
    with Store(db) as store:
        c2 = [i for i in store.interactions() if i["conversation_id"] == "c2"]
        assert len(c2) == 2 and all(i["response"] == "[forgotten on request]" for i in c2)
        assert [(e["conversation_id"], e["interactions"]) for e in store.forget_events()] == [("c2", 2)]
        assert store.label_items()[0]["response_a"] == "[forgotten on request]"
        assert store.label_items()[1]["response_a"] == "a"  # other items untouched
        assert sum(e["detail"]["files"].get(str(workdir / "iter-0001" / "prompts.jsonl"), 0)
                   for e in store.forget_events()) == 1
        with pytest.raises(Exception, match="append-only"):  # the trigger is back
            store._conn.execute("UPDATE interactions SET response = 'x'")
        store.log_interaction("c2", "tiny:v1", [{"role": "user", "content": "And why is it red at dusk?"}], "ok")
    for f in tmp_path.glob("prefloop.sqlite*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f  # secure_delete: not left in free pages or the WAL
    for step in STEPS[5:]:
        run_loop(cfg, step)
    run_loop(cfg, "collect")
    out = run_loop(cfg, "sample")["outputs"]["sample"]
    assert out["prompts"] == 0 and out["skipped"] == {"forgotten_conversation": 1, "duplicate_prompt": 0,
                                                      "conversation_cap": 0, "over_size": 0}
    with Store(db) as store:
        assert store.loop_iterations("tiny")[-1]["steps"]["sample"]["inputs"]["forgotten_conversations"] == 1


def test_collect_takes_what_serve_logged_through_the_openai_client(tmp_path, tiny_model_dir, judge):
    import httpx
    import openai

    from prefloop.models import load_causal_lm, load_tokenizer
    from prefloop.sampling import LocalGenerator
    from prefloop.serve.app import create_app
    from prefloop.serve.engine import GenerationEngine

    db, _ = _setup(tmp_path, tiny_model_dir, judge.url, FAIL_RULES)
    cfg = load_loop_config(tmp_path / "loop.yaml")
    run_loop(cfg, "collect")  # iteration 1 takes the hand-made rows; what serve logs next is not in it
    for step in STEPS[1:]:
        run_loop(cfg, step)
    engine = GenerationEngine(LocalGenerator(load_causal_lm(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))))
    question = [{"role": "user", "content": "Mail bob@example.com: which planet is largest?"}]
    with Store(db) as store, BackgroundServer(create_app(engine, "tiny", store=store)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        resp = client.chat.completions.create(model="tiny", messages=question, max_tokens=6, n=2, seed=1,
                                              temperature=1.0, extra_body={"conversation_id": "web-1"})
        ids = [c.model_extra["interaction_id"] for c in resp.choices]
        assert httpx.post(server.url + "/v1/feedback", json={"interaction_id": ids[0], "other_interaction_id": ids[1],
                                                             "value": "other", "annotator": "ana"}).status_code == 200
    engine.close()
    texts = [c.message.content for c in resp.choices]
    collect = run_loop(cfg, "collect")["outputs"]["collect"]
    assert collect["interactions"] == 2 and collect["feedback"] == 1 and collect["interactions_by_model"] == {"tiny": 2}
    sample = run_loop(cfg, "sample")["outputs"]["sample"]
    assert sample["prompts"] == 1 and sample["scrubbed"]["EMAIL"] == 1  # n=2: one prompt, the address scrubbed
    assert "[EMAIL]" in (tmp_path / "prefloop.sqlite.loop" / "tiny" / "iter-0002" / "prompts.jsonl").read_text()
    for step in ("generate", "label"):
        run_loop(cfg, step)
    pairs = run_loop(cfg, "pairs")["outputs"]["pairs"]
    records = [json.loads(x) for x in open(pairs["new_file"])]
    from_user = [r for r in records if r["provenance"]["source"] == "feedback:choice"]
    assert texts[0] != texts[1]  # seeded sampling (seed 1 and 2 for the two choices)
    assert [(r["chosen"], r["rejected"]) for r in from_user] == [(texts[1], texts[0])]
    assert from_user[0]["provenance"]["interaction_ids"] == [ids[1], ids[0]]
    assert from_user[0]["conversations"][0]["value"] == "Mail [EMAIL]: which planet is largest?"


def test_steps_run_in_order_and_one_process_at_a_time(tmp_path, tiny_model_dir, judge, capsys):
    import fcntl

    _setup(tmp_path, tiny_model_dir, judge.url, FAIL_RULES)
    loop = str(tmp_path / "loop.yaml")
    cfg = yaml.safe_load((tmp_path / "loop.yaml").read_text())
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({**cfg, "name": "tiyn"}))  # a typo in name:
    assert main(["loop", str(tmp_path / "other.yaml")]) == 2
    assert "no model named 'tiyn' in" in (err := capsys.readouterr().err) and "did you mean 'tiny'?" in err
    assert "registered: tiny" in err
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({**cfg, "store": str(tmp_path / "typo.sqlite")}))
    assert main(["loop", str(tmp_path / "other.yaml")]) == 2  # a typo in store: no empty store made
    assert "typo.sqlite does not exist" in capsys.readouterr().err
    assert not (tmp_path / "typo.sqlite").exists() and not (tmp_path / "typo.sqlite.loop").exists()
    assert main(["loop", loop, "--step", "train"]) == 2
    assert "iteration 1: train needs collect, sample, generate, label, pairs first" in capsys.readouterr().err
    assert main(["loop", loop, "--step", "deploy"]) == 2
    assert "--step must be one of collect, sample" in capsys.readouterr().err
    assert main(["loop", loop, "--step", "collect"]) == 0
    lock = tmp_path / "prefloop.sqlite.loop" / "tiny" / ".lock"
    with lock.open("a+") as held:  # another process's run
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main(["loop", loop, "--step", "sample"]) == 2
        assert "another prefloop loop is running this loop" in capsys.readouterr().err
    assert main(["loop", loop, "--step", "sample"]) == 0
    assert main(["loop", "status", loop]) == 0
    assert "iteration 1 (open" in capsys.readouterr().out
    assert main(["loop", loop, "--until", "gated"]) == 1  # stops after the (failing) gate
    assert "gate fail; report: " in capsys.readouterr().out
    with Store(tmp_path / "prefloop.sqlite") as store:
        assert "promote" not in store.loop_iterations("tiny")[0]["steps"]
    assert main(["loop", loop, "--step", "promote"]) == 1  # the champion stays
    assert "not promoted (gate fail" in capsys.readouterr().out


def test_export_interactions_gives_the_feedback_pairs(tmp_path, capsys):
    db = tmp_path / "prefloop.sqlite"
    q = [{"role": "user", "content": "Write to ana@example.org?"}]
    with Store(db) as store:
        a = store.log_interaction("c1", "m:v1", q, "Sure.")
        b = store.log_interaction("c1", "m:v1", q, "Done, I wrote to ana@example.org.")
        c = store.log_interaction("c2", "m:v1", [{"role": "user", "content": "hi"}], "hello")
        store.add_feedback(a, "choice", "other", other_interaction_id=b)
        store.add_feedback(c, "thumbs", "down")
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "fb.jsonl").write_text("old\n")
    out = tmp_path / "fb.jsonl"  # a symlink stays one: the file it points to is replaced (atomically)
    out.symlink_to(tmp_path / "kept" / "fb.jsonl")
    assert main(["export", "--interactions", "--scrub-pii", "--db", str(db), "--out", str(out)]) == 0
    assert out.is_symlink() and [p.name for p in (tmp_path / "kept").iterdir()] == ["fb.jsonl"]
    printed = capsys.readouterr().out
    assert "2 feedback rows on 3 interactions -> 1 pairs; left out: no_better_answer 1; scrubbed" in printed
    [pair] = [json.loads(x) for x in out.read_text().splitlines()]
    assert (pair["chosen"], pair["rejected"]) == ("Done, I wrote to [EMAIL].", "Sure.")
    assert pair["conversations"] == [{"from": "human", "value": "Write to [EMAIL]?"}]
    assert pair["provenance"]["interaction_ids"] == [b, a] and pair["source"] == "feedback:choice"


def test_import_interactions_is_idempotent_and_feeds_the_pairs(tmp_path, capsys):
    db = tmp_path / "prefloop.sqlite"
    q = [{"role": "user", "content": "Name a prime."}]
    lines = [
        {"request": {"model": "policy", "messages": q, "n": 2},
         "response": {"id": "chatcmpl-1", "model": "smollm2:v3", "usage": {"completion_tokens": 3},
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "Nine."}},
                                  {"index": 1, "message": {"role": "assistant", "content": "Seven."}}]},
         "conversation_id": "g1", "feedback": [{"kind": "choice", "choice": 0, "other": 1, "value": 1}]},
        {"request": {"messages": [{"role": "user", "content": "hi"}]},
         "response": {"choices": [{"message": {"role": "assistant", "content": "hello"}}]},
         "feedback": [{"kind": "thumbs", "value": "down"}]},
    ]
    f = tmp_path / "gateway.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert main(["import-interactions", str(f), "--db", str(db)]) == 0
    assert main(["import-interactions", str(f), "--db", str(db)]) == 0  # again: nothing twice
    out = capsys.readouterr().out
    assert "imported 2 completion(s)" in out and "3 interaction(s), 2 feedback row(s); 0 already" in out
    assert "imported 0 completion(s)" in out and "2 already in the store (skipped)" in out
    with Store(db) as store:
        rows = store.interactions()
        assert [(i["conversation_id"], i["model"], i["response"]) for i in rows] == [
            ("g1", "smollm2:v3", "Nine."), ("g1", "smollm2:v3", "Seven."), (rows[2]["params"]["import_key"],
                                                                           "unknown", "hello")]
        pairs, skipped = feedback_pairs({i["id"]: i for i in rows}, store.feedback())
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("Seven.", "Nine.")]
    assert dict(skipped) == {"no_better_answer": 1}
    bad = dict(lines[0], feedback=[{"kind": "choice", "choice": 0, "other": 1, "value": 5}])
    f.write_text(json.dumps(lines[1]) + "\n" + json.dumps(bad) + "\n")
    assert main(["import-interactions", str(f), "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert f"{f}:2: feedback[0].value: must be 0 or 1 (the preferred choice), got 5" in err


def test_an_iteration_without_pairs_ends_and_the_next_collects_anew(tmp_path, tiny_model_dir, judge, capsys):
    db, _ = _setup(tmp_path, tiny_model_dir, judge.url, FAIL_RULES)
    loop = str(tmp_path / "loop.yaml")
    for step in STEPS[:5]:
        assert main(["loop", loop, "--step", step]) == 0
    assert main(["loop", loop]) == 1  # iteration 1: trained, gate failed
    assert main(["loop", loop]) == 0  # iteration 2: nothing new was logged
    out = capsys.readouterr().out
    assert "iteration 2: not promoted (no pairs to train on this iteration)" in out
    with Store(db) as store:
        its = store.loop_iterations("tiny")
        assert [set(i["steps"]) for i in its] == [set(STEPS), set(STEPS)]
        assert its[1]["steps"]["collect"]["outputs"]["interactions"] == 0
        assert [v["version"] for v in store.model_versions("tiny")] == ["v1", "v2"]
        store.log_interaction("c7", "tiny:v1", [{"role": "user", "content": "A new question?"}], "ok")
    assert main(["loop", loop, "--step", "collect"]) == 0
    with Store(db) as store:
        assert store.loop_iterations("tiny")[2]["steps"]["collect"]["outputs"]["interactions"] == 1


def test_human_labeling_waits_for_votes_then_the_judge_fills_what_is_left(tmp_path, tiny_model_dir, judge, capsys):
    import time

    db, _ = _setup(tmp_path, tiny_model_dir, judge.url, FAIL_RULES)
    cfg_file = tmp_path / "loop.yaml"
    cfg = yaml.safe_load(cfg_file.read_text())
    cfg["generate"]["k"] = 2
    cfg["label"].update({"mode": "human_then_judge", "deadline_hours": 2 / 3600})  # a 2-second deadline
    cfg_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["loop", str(cfg_file)]) == 3
    assert "0 of 3 items have 1 vote(s); waiting until" in capsys.readouterr().out
    with Store(db) as store:
        items = [i for i in store.label_items() if i["origin"] == "loop:tiny:1"]
        assert len(items) == 3
        store.add_vote(items[0]["id"], "ana", "b", "ab")   # candidate 1 preferred
        store.add_vote(items[1]["id"], "ana", "skip", "ab")  # a skip is no vote
    assert main(["loop", str(cfg_file), "--step", "label"]) == 3
    assert "1 of 3 items have 1 vote(s)" in capsys.readouterr().out
    assert main(["loop", "status", str(cfg_file)]) == 0
    assert "generate=3 label=waiting for votes (3 items) pairs=pending" in capsys.readouterr().out
    time.sleep(2.2)
    assert main(["loop", str(cfg_file)]) == 1  # past the deadline: the judge labels the 2 unvoted items, then on
    with Store(db) as store:
        label = store.loop_iterations("tiny")[0]["steps"]["label"]["outputs"]
        assert (label["voted_items"], label["judged_items"]) == (1, 2)
        records = [json.loads(x) for x in open(label["file"])]
        human = [r for r in records if r.get("provenance", {}).get("source") == "human:votes"]
        assert [(r["chosen"], r["rejected"]) for r in human] == [(items[0]["response_b"], items[0]["response_a"])]
        assert len(records) == 1 + label["judge_pairs"]
        pairs = store.loop_iterations("tiny")[0]["steps"]["pairs"]["outputs"]
        assert pairs["by_source"]["human:votes"] == 1


def test_the_train_step_runs_under_a_launcher(tmp_path, tiny_model_dir, judge, monkeypatch):
    """`train.launcher`: the step trains with `LAUNCHER -m prefloop train ...` (here torchrun with 2 processes
    on the CPU) and registers what rank 0 wrote; a bad launcher is a located error."""
    import socket
    import sys

    db, v1 = _setup(tmp_path, tiny_model_dir, judge.url, PASS_RULES)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    marks = tmp_path / "ranks"
    marks.mkdir()
    site = tmp_path / "site"
    site.mkdir()  # every Python process started below notes its torchrun rank ("none": the launcher itself)
    (site / "sitecustomize.py").write_text(
        "import os\n"
        f"open(os.path.join({str(marks)!r}, 'rank-' + os.environ.get('RANK', 'none') + '-' + str(os.getpid())), 'w')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    loop = yaml.safe_load((tmp_path / "loop.yaml").read_text())
    loop["train"]["launcher"] = (f"{sys.executable} -m torch.distributed.run --nproc_per_node 2 "
                                 f"--master_addr 127.0.0.1 --master_port {port}")
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(loop, sort_keys=False))
    assert main(["loop", str(tmp_path / "loop.yaml")]) == 0
    state = _state(db)
    assert [v[:2] for v in state["versions"]] == [("v1", None), ("v2", v1["id"])] and state["aliases"]["champion"] == 2
    ranks = sorted(p.name.split("-")[1] for p in marks.iterdir())
    assert "0" in ranks and "1" in ranks, ranks  # two training processes ran
    iteration = tmp_path / "prefloop.sqlite.loop" / "tiny" / "iter-0001"
    assert (iteration / "train" / "all_results.json").is_file() and (iteration / "train.log").is_file()

    loop["train"]["launcher"] = "no-such-launcher --nproc_per_node 2"
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(loop, sort_keys=False))
    with pytest.raises(ConfigError, match=r"loop.yaml, line \d+: train.launcher: .*not found"):
        load_loop_config(tmp_path / "loop.yaml")
