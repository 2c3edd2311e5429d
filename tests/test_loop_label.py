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
