"""The loop's label modes beyond the LLM judge: a reward model (scores, ties, resuming from its score cache,
the policy's chat template) and people comparing K > 2 answers (items loaded once, votes -> pairs)."""

import json

import pytest
import yaml

from prefloop.cli import main
from prefloop.loop.config import load_loop_config
from prefloop.loop.steps import run_loop
from prefloop.store import Store
from prefloop.testing import CHATML_TEMPLATE, save_tiny_reward_model
from test_loop import Killed, _setup, judge  # noqa: F401 - judge is a fixture


def _configure(tmp_path, **label):
    f = tmp_path / "loop.yaml"
    cfg = yaml.safe_load(f.read_text())
    cfg["label"] = {**cfg["label"], **label}
    f.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return load_loop_config(f)


def _independent_scores(rm_dir, messages, answers, template=CHATML_TEMPLATE):
    """Each answer scored alone, straight through transformers (not prefloop's RewardModel)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rm_dir)
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir, dtype=torch.float32).eval()
    out = []
    with torch.inference_mode():
        for a in answers:
            text = tok.apply_chat_template(messages + [{"role": "assistant", "content": a}], tokenize=False,
                                           chat_template=template)
            ids = tok(text, add_special_tokens=False, return_tensors="pt")
            out.append(float(model(**ids).logits[0, 0]))
    return out


@pytest.mark.parametrize("template", ["own", "policy"])
def test_reward_model_labels_best_vs_worst_and_a_rerun_resumes_from_its_scores(tmp_path, tiny_model_dir, judge,
                                                                               template):
    rm = save_tiny_reward_model(tmp_path / "rm", seed=3, chat_template=CHATML_TEMPLATE if template == "own" else None)
    _setup(tmp_path, tiny_model_dir, judge.url, {"rules": []})
    cfg = _configure(tmp_path, mode="reward_model", reward_model="rm", reward_template=template, batch_size=2,
                     precision="fp32", device="cpu")

    def kill_in_label(step, phase):  # scored and written, the step not yet recorded
        if step == "label" and phase == "before_record":
            raise Killed()

    for step in ("collect", "sample", "generate"):
        run_loop(cfg, step)
    with pytest.raises(Killed):
        run_loop(cfg, "label", hook=kill_in_label)
    judged_file = tmp_path / "prefloop.sqlite.loop" / "tiny" / "iter-0001" / "judged.jsonl"
    first = judged_file.read_text()
    label = run_loop(cfg, "label")["outputs"]["label"]
    assert judged_file.read_text() == first  # the rerun wrote the same pairs
    report = json.loads((judged_file.parent / "judged.report.json").read_text())
    assert report["scores_from_cache"] == report["scored_answers"] == 3 * 3  # nothing scored twice
    assert report["precision"] == "fp32" and report["device"] == "cpu"
    with Store(tmp_path / "prefloop.sqlite") as store:
        champion_path = store.model_version(store.aliases("tiny")["champion"])["path"]
    assert report["template_from"] == (str(rm) if template == "own" else champion_path)
    candidates = [json.loads(x) for x in open(tmp_path / "prefloop.sqlite.loop/tiny/iter-0001/candidates.jsonl")]
    records = [json.loads(x) for x in first.splitlines()]
    assert label["pairs"] == len(records) == len(candidates) == 3 and label["left_out"] == {}
    for r in records:
        c = next(c for c in candidates if c["messages"][0]["content"] == r["conversations"][0]["value"])
        scores = _independent_scores(str(rm), c["messages"], c["candidates"])
        best = max(range(3), key=scores.__getitem__)
        worst = min(range(3), key=scores.__getitem__)
        assert (r["chosen"], r["rejected"]) == (c["candidates"][best], c["candidates"][worst])
        p = r["provenance"]
        assert p["source"] == "reward_model:best_vs_worst" and p["reward_model"] == "reward:rm"
        assert p["scores"]["chosen"] == pytest.approx(scores[best], abs=1e-3)
        assert p["scores"]["rejected"] == pytest.approx(scores[worst], abs=1e-3)
        assert p["margin"] == pytest.approx(p["scores"]["chosen"] - p["scores"]["rejected"], abs=1e-6)
        assert p["margin"] > 0
    pairs = run_loop(cfg, "pairs")["outputs"]["pairs"]
    assert pairs["by_source"]["reward_model:best_vs_worst"] == 3
    new = [json.loads(x) for x in open(pairs["new_file"])]
    assert all("margin" in r["provenance"] for r in new if r["provenance"]["source"].startswith("reward"))


def test_reward_model_ties_give_no_pair_and_are_counted_and_all_pairs_is_honoured(tmp_path, tiny_model_dir, judge):
    import torch
    from transformers import AutoModelForSequenceClassification

    rm = save_tiny_reward_model(tmp_path / "rm")
    model = AutoModelForSequenceClassification.from_pretrained(rm)
    with torch.no_grad():
        model.score.weight.zero_()  # every answer scores exactly 0: all ties
    model.save_pretrained(rm)
    _setup(tmp_path, tiny_model_dir, judge.url, {"rules": []})
    cfg = _configure(tmp_path, mode="reward_model", reward_model="rm", pairing="all")
    for step in ("collect", "sample", "generate"):
        run_loop(cfg, step)
    label = run_loop(cfg, "label")["outputs"]["label"]
    assert label["pairs"] == 0 and label["left_out"] == {"tie": 3 * 3}  # 3 prompts x 3 pairs of answers


def test_reward_model_without_a_chat_template_is_a_clear_error(tmp_path, tiny_model_dir, judge, capsys):
    save_tiny_reward_model(tmp_path / "rm", chat_template=None)
    _setup(tmp_path, tiny_model_dir, judge.url, {"rules": []})
    _configure(tmp_path, mode="reward_model", reward_model="rm")
    assert main(["loop", str(tmp_path / "loop.yaml")]) == 2
    assert "has no chat template" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ people, K > 2


def test_item_comparisons_start_with_the_cycle_and_respect_the_cap():
    from prefloop.loop.labeling import item_comparisons

    assert item_comparisons(2) == [(0, 1)]
    assert item_comparisons(3) == [(0, 1), (1, 2), (0, 2)]
    assert item_comparisons(4) == [(0, 1), (1, 2), (2, 3), (0, 3), (0, 2), (1, 3)]
    assert item_comparisons(4, cap=3) == [(0, 1), (1, 2), (2, 3)]


def test_outcomes_to_pairs_on_hand_made_tables():
    from prefloop.candidates import CandidateSet
    from prefloop.loop.labeling import pairs_from_outcomes, win_shares

    s = CandidateSet("p", [{"role": "user", "content": "q"}], ["A", "B", "C", "D"], [], [])

    def rec(i, j):
        return {"chosen": s.candidates[i], "rejected": s.candidates[j], "provenance": {"source": "human:votes"}}

    human = {"source": "human:votes", "origin": "o"}
    chain = {(0, 1): ("x", rec(0, 1)), (1, 2): ("x", rec(1, 2)), (2, 3): ("x", rec(2, 3))}  # capped: a path
    [inferred], reasons = pairs_from_outcomes(s, chain, "best_worst", human)
    assert (inferred["chosen"], inferred["rejected"]) == ("A", "D") and not reasons
    assert inferred["provenance"]["source"] == "human:ranking"
    assert inferred["provenance"]["win_shares"] == {"candidate 0": "1", "candidate 1": "1/2", "candidate 2": "1/2",
                                                    "candidate 3": "0"}
    records, _ = pairs_from_outcomes(s, chain, "all", human)
    assert [(r["chosen"], r["rejected"]) for r in records] == [("A", "B"), ("B", "C"), ("C", "D")]
    # best by share (A: 2/3) lost head-to-head to the worst (D: 1/3): no pair, counted
    conflict = {(0, 1): ("x", rec(0, 1)), (0, 2): ("x", rec(0, 2)), (0, 3): ("y", rec(3, 0)),
                (1, 3): ("x", rec(1, 3)), (2, 3): ("x", rec(2, 3)), (1, 2): ("tie", None)}
    from fractions import Fraction as F
    assert win_shares({k: v[0] for k, v in conflict.items()}) == {0: F(2, 3), 1: F(1, 2), 2: F(1, 2), 3: F(1, 3)}
    assert pairs_from_outcomes(s, conflict, "best_worst", human) == ([], {"ranking_conflict": 1})
    cycle = {(0, 1): ("x", rec(0, 1)), (1, 2): ("x", rec(1, 2)), (0, 2): ("y", rec(2, 0))}  # rock-paper-scissors
    assert pairs_from_outcomes(s, cycle, "best_worst", human) == ([], {"no_clear_best": 1})
    direct = {(0, 1): ("y", rec(1, 0)), (1, 2): ("x", rec(1, 2)), (0, 2): ("x", rec(0, 2))}
    assert pairs_from_outcomes(s, direct, "best_worst", human)[0] == [rec(1, 2)]  # B best, C worst, compared


def _items(db, origin="loop:tiny:1"):
    with Store(db) as store:
        return [i for i in store.label_items() if i["origin"] == origin]


def _vote_smaller_text(store, item, annotator="ana"):
    """A voter who always prefers the alphabetically smaller answer (a strict, transitive order), voting as the
    label app records it: the verdict relative to the stored a/b, the order the two were shown in."""
    verdict = "a" if item["response_a"] < item["response_b"] else "b"
    store.add_vote(item["id"], annotator, verdict, "ba" if item["id"] % 2 else "ab")


@pytest.mark.parametrize("pairing", ["best_worst", "all"])
def test_people_compare_three_answers_items_load_once_and_votes_become_pairs(tmp_path, tiny_model_dir, judge,
                                                                           capsys, pairing):
    db, _ = _setup(tmp_path, tiny_model_dir, judge.url, {"rules": []})
    cfg = _configure(tmp_path, mode="human", pairing=pairing)
    assert cfg.generate["k"] == 3
    assert main(["loop", cfg.source]) == 3
    assert "0 of 9 items have 1 vote(s)" in capsys.readouterr().out
    items = _items(db)
    assert len(items) == 9  # 3 prompts x 3 comparisons
    assert main(["loop", cfg.source]) == 3  # a rerun loads nothing again
    assert _items(db) == items
    with Store(db) as store:
        for item in items:
            _vote_smaller_text(store, item)
        store.add_vote(items[0]["id"], "bo", "skip", "ab")  # a skip is no vote
    assert main(["loop", cfg.source, "--step", "label"]) == 0
    with Store(db) as store:
        label = store.loop_iterations("tiny")[0]["steps"]["label"]["outputs"]
    assert label["voted_items"] == 9 and label["judged_items"] == 0 and label["left_out"] == {}
    records = [json.loads(x) for x in open(label["file"])]
    by_prompt = {}
    for item in items:
        by_prompt.setdefault(item["prompt"][-1]["content"], set()).update({item["response_a"], item["response_b"]})
    if pairing == "best_worst":
        assert len(records) == 3
        for r in records:
            answers = by_prompt[r["conversations"][-1]["value"]]
            assert (r["chosen"], r["rejected"]) == (min(answers), max(answers))
    else:
        assert len(records) == 9 and all(r["chosen"] < r["rejected"] for r in records)
    assert all(r["provenance"]["source"] == "human:votes" and r["annotators"] == ["ana"] for r in records)
    assert main(["loop", cfg.source, "--step", "pairs"]) == 0
    assert _items(db) == items


def test_people_labeling_does_not_wait_for_forgotten_items_or_comparisons_judged_elsewhere(tmp_path, tiny_model_dir,
                                                                                           judge, capsys):
    db, _ = _setup(tmp_path, tiny_model_dir, judge.url, {"rules": []})
    cfg = _configure(tmp_path, mode="human", pairing="all")  # deadline: the default 48 hours
    assert main(["loop", cfg.source]) == 3
    items = _items(db)
    assert len(items) == 9
    forgotten, elsewhere, rest = items[0], items[1], items[2:]
    with Store(db) as store:
        # the same comparison as `elsewhere`, stored the other way round by another file: ana judged it there,
        # so the label app never shows her `elsewhere`; her vote there is her vote on this comparison
        dup = store.add_label_item(elsewhere["prompt"], elsewhere["response_b"], elsewhere["response_a"],
                                   "file b", "file a", "another file")
        _vote_smaller_text(store, store.label_item(dup))
        for item in rest:
            _vote_smaller_text(store, item)
        store.forget_conversation("gone", label_item_ids=[forgotten["id"]])  # `prefloop forget` meanwhile
        assert forgotten["id"] in store.unlabelable_item_ids()
    capsys.readouterr()
    assert main(["loop", cfg.source, "--step", "label"]) == 0  # nothing left to wait for: no 48-hour wait
    with Store(db) as store:
        label = store.loop_iterations("tiny")[0]["steps"]["label"]["outputs"]
    assert label["voted_items"] == 8 and label["unlabelable_items"] == 1
    assert sum(v for k, v in label["left_out"].items() if k.startswith("forgotten")) == 1
    records = [json.loads(x) for x in open(label["file"])]
    assert len(records) == 8 and all(r["chosen"] < r["rejected"] for r in records)
    assert any({r["chosen"], r["rejected"]} == {elsewhere["response_a"], elsewhere["response_b"]} for r in records)


def test_people_then_the_judge_with_three_answers(tmp_path, tiny_model_dir, judge):
    import time

    db, _ = _setup(tmp_path, tiny_model_dir, judge.url, {"rules": []})
    cfg = _configure(tmp_path, mode="human_then_judge", deadline_hours=2 / 3600, items_per_prompt=2)
    assert main(["loop", cfg.source]) == 3
    items = _items(db)
    assert len(items) == 3 * 2  # capped: the first two comparisons of the cycle, 0-1 and 1-2
    first_prompt = items[0]["prompt"]
    voted = [i for i in items if i["prompt"] == first_prompt]
    assert [(i["source_a"], i["source_b"]) for i in voted] == [("candidate 0", "candidate 1"),
                                                               ("candidate 1", "candidate 2")]
    with Store(db) as store:
        for item in voted:  # candidate 0 > 1 > 2; 0 and 2 were never compared
            store.add_vote(item["id"], "ana", "a", "ab")
    time.sleep(2.2)
    assert main(["loop", cfg.source, "--step", "label"]) == 0
    with Store(db) as store:
        label = store.loop_iterations("tiny")[0]["steps"]["label"]["outputs"]
    assert (label["voted_items"], label["judged_items"]) == (2, 4)
    records = [json.loads(x) for x in open(label["file"])]
    [human] = [r for r in records if r["provenance"]["source"].startswith("human")]
    assert (human["chosen"], human["rejected"]) == (voted[0]["response_a"], voted[1]["response_b"])
    assert human["provenance"]["source"] == "human:ranking" and human["provenance"]["judged_comparisons"] == 0
    judged = [r for r in records if r is not human]
    assert label["judge_pairs"] == len(judged) and all(r["provenance"]["source"].startswith("judge") for r in judged)
    assert all(len(r["chosen"]) > len(r["rejected"]) for r in judged)  # the scripted judge prefers longer answers
    assert _items(db) == items


# ------------------------------------------------------------------------------------------ low-confidence sampling


def unsure_about_poems_and_physics(messages):
    """A judge that is sure (the longer answer, else the alphabetically first: decisive in both orders) except
    for the haiku and gravity prompts, where it always picks whichever answer it sees first (position bias:
    the two orders disagree)."""
    from test_judge import shown_answers

    text = messages[0]["content"].lower()
    if "haiku" in text or "gravity" in text:
        return "First one. [[A]]"
    a, b = shown_answers(messages)
    return "[[A]]" if (len(a), b) > (len(b), a) else "[[B]]"


def test_low_confidence_sampling_keeps_the_prompts_the_judge_cannot_decide(tmp_path, tiny_model_dir):
    from prefloop.serve.background import BackgroundServer
    from test_judge import scripted_judge_app

    app, requests = scripted_judge_app(unsure_about_poems_and_physics)
    with BackgroundServer(app) as server:
        db, _ = _setup(tmp_path, tiny_model_dir, server.url, {"rules": []})
        f = tmp_path / "loop.yaml"
        raw = yaml.safe_load(f.read_text())
        raw["sample"] = {"strategy": "low_confidence", "size": 2, "per_conversation": 2}
        raw["label"].update(mode="human_then_judge", deadline_hours=0)
        raw["generate"]["k"] = 2
        f.write_text(yaml.safe_dump(raw, sort_keys=False))
        cfg = load_loop_config(f)
        run_loop(cfg, "collect")

        def kill(step, phase):
            if step == "sample" and phase == "before_record":
                raise Killed()

        with pytest.raises(Killed):
            run_loop(cfg, "sample", hook=kill)
        asked = len(requests)
        out = run_loop(cfg, "sample")["outputs"]["sample"]
        assert len(requests) == asked  # the rerun's judgments came from the cache
    conf = out["confidence"]
    assert conf["pool"] == 6 and conf["judged"] == 6 and conf["with_log_probs"] == 4  # 6 distinct prompts
    assert out["prompts"] == 2 and out["skipped"]["judge_more_confident"] == 4
    kept = [json.loads(x) for x in open(out["file"])]
    assert sorted(r["messages"][0]["content"] for r in kept) == ["Explain gravity to a child.",
                                                                 "Write a haiku about rain."]
    assert all(r["judge_confidence"] == 0 and r["judge_outcome"] == "tie" for r in kept)
    pool = [json.loads(x) for x in open(conf["file"])]
    sure = [r for r in pool if r not in kept]
    # the scripted endpoint gives the verdict 0.8, the other answer 0.15, a tie 0.05 in each order
    assert all(r["judge_outcome"] in ("x", "y") and r["judge_confidence"] == pytest.approx(0.65, abs=1e-3)
               for r in sure)
    assert conf["kept_confidence_max"] == 0 and conf["confidence_max"] == pytest.approx(0.65, abs=1e-3)


def test_low_confidence_pool_errors_are_located(tmp_path, capsys):
    (tmp_path / "train.yaml").write_text("max_steps: 1\n")
    (tmp_path / "eval.jsonl").write_text('{"prompt": "hi"}\n')
    base = {"name": "tiny", "sample": {"strategy": "low_confidence", "size": 4, "pool": 2}, "label": {"judge": "http://127.0.0.1:1/v1"},
            "train": {"config": "train.yaml"}, "eval": {"prompts": "eval.jsonl"}}
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    assert main(["loop", str(tmp_path / "loop.yaml")]) == 2
    assert "line 5: sample.pool: must be at least sample.size (4)" in capsys.readouterr().err
    base["sample"] = {"strategy": "recent", "pool": 8}
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    assert main(["loop", str(tmp_path / "loop.yaml")]) == 2
    assert "sample.pool: is used only with sample.strategy low_confidence" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ generation by the endpoint


def test_generate_through_the_serving_endpoint_checks_it_serves_the_champion(tmp_path, tiny_model_dir, judge,
                                                                               monkeypatch, capsys):
    from prefloop.registry import aliases as al
    from prefloop.registry.commands import register_model
    from prefloop.serve.app import _follow_registry, create_app
    from prefloop.serve.background import BackgroundServer
    from prefloop.testing import save_tiny_model

    db, _ = _setup(tmp_path, tiny_model_dir, judge.url, {"rules": []})
    monkeypatch.setenv("LOOP_SERVE_KEY", "s3cret")
    with Store(db) as store:
        # `prefloop serve --registry tiny --db STORE --api-key-env ...`: logs interactions, follows the champion
        # (here slowly: a promote is not seen for an hour, so the test can catch it serving the old one)
        holder, follower = _follow_registry(store, "tiny", None, 16, poll_seconds=3600)
        try:
            with BackgroundServer(create_app(None, None, "s3cret", store=store, holder=holder)) as server:
                f = tmp_path / "loop.yaml"
                raw = yaml.safe_load(f.read_text())
                raw["generate"].update(endpoint=server.url + "/v1", api_key_env="LOOP_SERVE_KEY", concurrency=2)
                raw["sample"].update(strategy="low_confidence", size=3)  # its pool's answers: the endpoint's too
                f.write_text(yaml.safe_dump(raw, sort_keys=False))
                cfg = load_loop_config(f)
                before = len(store.interactions())
                for step in ("collect", "sample"):
                    run_loop(cfg, step)
                pool = [json.loads(x) for x in open(tmp_path / "prefloop.sqlite.loop/tiny/iter-0001/pool.candidates.jsonl")]
                assert len(pool) == 3 and all(r["served_by"] == "tiny:v1" for r in pool)
                register_model(store, str(save_tiny_model(tmp_path / "m2", seed=1)), "tiny")
                al.promote(store, "v2", "tiny")  # the server still answers with v1
                capsys.readouterr()
                assert main(["loop", str(f), "--step", "generate"]) == 2
                err = capsys.readouterr().err
                assert "generate.endpoint " + server.url + "/v1 serves tiny:v1 (version v1), not the champion " \
                       "tiny:v2; point generate.endpoint at the server of the champion (`prefloop serve --registry " \
                       "tiny --db" in err
                al.promote(store, "v1", "tiny")  # back to the version the server answers with
                logged = len(store.interactions())
                gen = run_loop(cfg, "generate")["outputs"]["generate"]
                assert len(store.interactions()) == logged == before  # `store: false`: not logged as user traffic
        finally:
            follower.stop()
            holder.close()
    records = [json.loads(x) for x in open(gen["file"])]
    assert gen["prompts"] == len(records) == 3
    assert all(r["served_by"] == "tiny:v1" and r["model"] == "tiny" and len(r["candidates"]) == 3 for r in records)
    with Store(db) as store:
        inputs = store.loop_iterations("tiny")[0]["steps"]["generate"]["inputs"]
    assert inputs["endpoint"] == server.url + "/v1"


def test_answers_of_another_version_are_removed_and_asked_again(tmp_path):
    from prefloop.loop.served import drop_answers_of_others
    from prefloop.loop.steps import LoopError

    out = tmp_path / "candidates.jsonl"
    rows = [{"id": "a", "served_by": "tiny:v2"}, {"id": "b", "served_by": "tiny:v1"}, {"id": "c"}]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))

    class Cfg:
        name, store, generate = "tiny", "db.sqlite", {"endpoint": "http://127.0.0.1:8000/v1"}

    champ = {"name": "tiny", "version": "v2"}
    with pytest.raises(LoopError, match=r"2 prompt\(s\) were answered by None, tiny:v1 at generate.endpoint "):
        drop_answers_of_others(Cfg, out, champ)
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["a"]
    drop_answers_of_others(Cfg, out, champ)  # all from the champion now: nothing to say


@pytest.mark.parametrize("change, message", [
    ({"endpoint": "localhost:8000"}, "generate.endpoint: must be an http:// or https:// URL"),
    ({"api_key_env": "KEY"}, "generate.api_key_env: is used only with generate.endpoint"),
])
def test_generate_endpoint_errors_are_located(tmp_path, capsys, change, message):
    (tmp_path / "train.yaml").write_text("max_steps: 1\n")
    (tmp_path / "eval.jsonl").write_text('{"prompt": "hi"}\n')
    base = {"name": "tiny", "generate": change, "label": {"judge": "http://127.0.0.1:1/v1"},
            "train": {"config": "train.yaml"}, "eval": {"prompts": "eval.jsonl"}}
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    assert main(["loop", str(tmp_path / "loop.yaml")]) == 2
    assert message in capsys.readouterr().err
