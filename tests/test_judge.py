"""`prefloop judge` and `judge-agreement`: verdict parsing, position-swap logic with judges of known
bias, the reward-model judge, caching, and the judge against `prefloop serve` end to end."""

import json
import math
import re

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from prefloop.data.loader import load_pairs
from prefloop.endpoint import UsageTotals
from prefloop.chat_clients import Completion
from prefloop.errors import ConfigError
from prefloop.judge.agreement import judge_agreement_command
from prefloop.stats import cohen_kappa
from prefloop.judge.cache import JudgmentCache
from prefloop.judge.pairwise import Comparison, JudgeStats, PairwiseJudge, combine
from prefloop.judge.parse import parse_verdict, soft_verdict
from prefloop.judge.prompt import RETRY_MESSAGE, JudgePrompt
from prefloop.judge.run import judge_command
from prefloop.sampling import TokenLogprob
from prefloop.serve.background import BackgroundServer
from prefloop.store import Store

# ------------------------------------------------------------------------------------------ parsing

PARSE_TABLE = [
    ("The first answer is more accurate.\n\nFinal verdict: [[A]]", "A"),
    ("[[b]]", "B"),
    ("Both are fine, but neither stands out. [[C]]", "C"),
    ("[[ A ]]", "A"),
    ("[[Tie]]", "C"),
    ("[[A]] is clearly better. My final verdict is [[A]]", "A"),
    ("I first leaned to [[A]] but on reflection [[B]]", None),  # two verdicts, no final statement
    ('I must output "[[A]]" if A is better, "[[B]]" if B is better, "[[C]]" for a tie. Verdict: [[B]]', "B"),
    ("Assistant A reads better, but it is wrong about the date. [[B]]", "B"),
    ("Verdict: B", "B"),
    ("A", "A"),
    ("B.", "B"),
    ("**A**", "A"),
    ("tie", "C"),
    ("Response B is better.", "B"),
    ("I prefer assistant a", "A"),
    ("I would choose B because it is concise.", "B"),
    ("Both responses are equally good.", "C"),
    ("I prefer a response that is concise. Assistant B is better.", "B"),
    ("The final verdict is Assistant A.", "A"),
    ("assistant b is better", "B"),
    ("Assistant A is better in style but Assistant B is better overall", None),
    ("The answer is a good one.", None),
    ("I cannot decide.", None),
    ("", None),
    # Arena-Hard's labels (its judge prompt asks for one of [[A>>B]], [[A>B]], [[A=B]], [[B>A]], [[B>>A]]);
    # before, "[[A=B]]" after "My final verdict is:" read as A, and "[[A<B]]" as A.
    ("My final verdict is: [[A>>B]]", "A"),
    ("My final verdict is Assistant A is slightly better: [[A>B]]", "A"),
    ("My final verdict is tie: [[A=B]]", "C"),
    ("My final verdict is: [[A=B]]", "C"),
    ("My final verdict is Assistant B is slightly better: [[B>A]]", "B"),
    ("[[B>>A]]", "B"),
    ("[[A<B]]", "B"),
    ("[[B<<A]]", "A"),
    ("[[ B > A ]]", "B"),
    ("B>A", "B"),
    ("My final verdict is [[A>B]] but then [[B>A]]", None),  # conflicting labels: no verdict
    ('Labels: "[[A>>B]]", "[[A>B]]", "[[A=B]]", "[[B>A]]", "[[B>>A]]". My final verdict is [[B>>A]]', "B"),
    # AlpacaEval's "Output (a)" / "Output (b)"
    ("Output (b)", "B"),
    ("Output (a)", "A"),
    ("Output (a) is better than Output (b).", "A"),
    # a reasoning model's thinking is not its answer
    ("<think>Maybe [[A]]... no, B is more accurate.</think>\n[[B]]", "B"),
    ("Maybe [[A]]? No.</think>\n\nFinal verdict: [[B]]", "B"),  # the template opened <think> in the prompt
    ("<think>Assistant A is better. [[A]] Let me check the dates again", None),  # cut off while thinking
    ("<think>[[A]]</think>", None),
    ("  <think>[[A]]</think>\n[[B]]", "B"),  # leading whitespace before the thinking block
    # a judge writing *about* think tags (a response that leaked them) still concludes
    ("Response A leaves a raw <think> tag in its answer, so Response B is better. [[B]]", "B"),
    ("[[A]]. Assistant B printed a stray </think> token.", "A"),
    ("Assistant B ends with </think> and <think> tags. Final verdict: [[A]]", "A"),
    ("Maybe [[A]]? No.</think>\n\nAssistant B wrote </think> too. [[B]]", "B"),  # verdict after the first close
]


@pytest.mark.parametrize("text, expected", PARSE_TABLE)
def test_parse_verdict(text, expected):
    parsed = parse_verdict(text)
    assert (parsed.verdict if parsed else None) == expected


# A verdict is the judge's stated conclusion, not wherever a side's letter occurs (issue 12, item 1):
# each reply with its right verdict; None means no verdict, so the judge is asked again.
CONCLUSION_TABLE = [
 ("Response A is wrong: the capital of France is Paris, not Lyon. The better answer is B.", "B"),
 ("Response A is wrong: the capital of France is Paris, not Lyon.", None),
 ("Assistant A is correct and Assistant B is wrong.", None),
 ("Response A is not better than response B.", None),
 ("It is not true that Assistant A is better.", None),
 ("Assistant A is worse than Assistant B.", "B"),
 ("Response A is less accurate than response B.", "B"),
 ("If Assistant A is better, say A. Here Assistant B is better.", "B"),
 ("Even if Assistant A is more detailed, Assistant B is better.", "B"),
 ("Response A is longer, but the better answer is B.", "B"),
 ("Assistant A is better in style, but my final verdict is B.", "B"),
 ("Assistant A is better in style, but Assistant B is better in substance.", None),
 ("I would not choose A.", None),
 ("I would not choose A; I choose B.", "B"),
 ("Assistant B isn't better; Assistant A is better.", "A"),
 ("Neither response is better; they say the same thing.", "C"),
 ("It's not a tie: Assistant A is better.", "A"),
 ("The better response is Assistant A.", "A"),
 ("Response B wins.", "B"),
 ("Answer A is a good start. Answer B is better.", "B"),
 ("Assistant A is better than Assistant B.", "A"),
 ("Assistant A is a better choice than B.", "A"),
 ("A is better than B because it cites a source.", "A"),
 ("Assistant B's answer is clearly more accurate.", "B"),
 ("B is the best one.", "B"),
 ("I prefer a response that is concise. Assistant B is better.", "B"),
 ("Both responses are equally good.", "C"),
 ("Both are not equally good: Assistant A is better.", "A"),
 ("The answer is a good one.", None),
 ("Assistant A said 'B is better', which is wrong.", None),
 ("Verdict: B", "B"),
 ("The final verdict is Assistant A.", "A"),
 ("Assistant A is better in style but Assistant B is better overall", None),
 ("A", "A"),
]


@pytest.mark.parametrize("text, expected", CONCLUSION_TABLE)
def test_verdict_is_the_stated_conclusion(text, expected):
    parsed = parse_verdict(text)
    assert (parsed.verdict if parsed else None) == expected


def test_soft_verdict_reads_the_verdict_token():
    tokens = [TokenLogprob("Better: [[", -0.1), TokenLogprob("A", math.log(0.6),
              [("A", math.log(0.6)), ("B", math.log(0.3)), (" C", math.log(0.05)), ("x", math.log(0.05))]),
              TokenLogprob("]]", -0.01)]
    text = "".join(t.token for t in tokens)
    soft = soft_verdict(tokens, parse_verdict(text))
    assert soft == pytest.approx({"A": 0.6 / 0.95, "B": 0.3 / 0.95, "C": 0.05 / 0.95})
    assert soft_verdict(None, parse_verdict(text)) is None
    # "Assistant A is worse": the letter written is the loser, so its probability is B's
    tokens = [TokenLogprob("Assistant ", -0.1), TokenLogprob("A", math.log(0.7),
              [("A", math.log(0.7)), ("B", math.log(0.2)), ("C", math.log(0.1))]), TokenLogprob(" is worse.", -0.1)]
    worse = parse_verdict("".join(t.token for t in tokens))
    assert worse.verdict == "B" and soft_verdict(tokens, worse) == pytest.approx({"A": 0.2, "B": 0.7, "C": 0.1})


def test_arena_hard_labels_keep_their_label_and_give_no_soft_verdict():
    """The letter at the verdict's position of "[[A=B]]" is A's first letter, not P(A): no soft verdict."""
    tokens = [TokenLogprob("Verdict: [[", -0.1), TokenLogprob("A", math.log(0.6), [("A", math.log(0.6)),
              ("B", math.log(0.4))]), TokenLogprob("=B]]", -0.01)]
    parsed = parse_verdict("".join(t.token for t in tokens))
    assert (parsed.verdict, parsed.label) == ("C", "A=B") and soft_verdict(tokens, parsed) is None
    thinking = "<think>[[A]]</think> Verdict: [[B]]"
    assert thinking[parse_verdict(thinking).position] == "B"  # positions count from the whole text


@pytest.mark.parametrize("first, second, outcome", [
    ("A", "B", "x"), ("B", "A", "y"), ("C", "C", "tie"), ("A", "A", "tie"), ("B", "B", "tie"),
    ("A", "C", "tie"), (None, "B", "no_verdict"), ("A", None, "no_verdict"),
])
def test_combine_both_orders(first, second, outcome):
    assert combine(first, second) == outcome


def test_template_keeps_braces_and_needs_placeholders(tmp_path):
    prompt = JudgePrompt("Q: {question}\nA: {answer_a}\nB: {answer_b}\nJSON like {\"x\": 1}", ("safety",))
    text = prompt.render([{"role": "user", "content": "hi {answer_b}"}], "one {criteria}", "two")
    assert text == 'Q: hi {answer_b}\nA: one {criteria}\nB: two\nJSON like {"x": 1}'
    with pytest.raises(ConfigError, match=r"\{answer_b\}"):
        JudgePrompt("Q: {question} A: {answer_a}")
    default = JudgePrompt.from_options("helpfulness,honesty", None)
    assert "helpfulness and honesty" in default.render([{"role": "user", "content": "q"}], "a", "b")


# ------------------------------------------------------------------------------------------ scripted judges

ANSWER = re.compile(r"\[The Start of Assistant (A|B)'s Answer\]\n(.*?)\n\[The End of Assistant \1's Answer\]", re.S)


def shown_answers(messages):
    found = dict(ANSWER.findall(messages[0]["content"]))
    return found["A"], found["B"]


def always_a(messages):
    return "Assistant A is more thorough.\n\n[[A]]"


def prefers_longer(messages):
    a, b = shown_answers(messages)
    return "Longer is better here. " + ("[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]")


def prose_then_verdict(messages):
    if messages[-1]["content"] == RETRY_MESSAGE:
        return prefers_longer(messages)
    return "Both answers have merits and flaws."


def never_decides(messages):
    return "I would rather not say."


class ScriptedClient:
    """A judge client implementing the chat-client protocol with a fixed policy (no model, no HTTP)."""

    name = "scripted"

    def __init__(self, policy):
        self.policy, self.usage, self.calls = policy, UsageTotals(), 0

    def complete_many(self, calls):
        for i, call in enumerate(calls):
            self.calls += 1
            self.usage.add_counts(10, 3)
            yield i, Completion([self.policy(call.messages)], ["stop"], [None], 10, 3)


def judge_sets(policy, tmp_path, sets):
    client = ScriptedClient(policy)
    judge = PairwiseJudge(client, JudgePrompt(), JudgmentCache(tmp_path / "cache.jsonl"))
    comparisons = [Comparison(si, i, j) for si, s in enumerate(sets) for i in range(len(s.candidates))
                   for j in range(i + 1, len(s.candidates))]
    judge.judge(comparisons, sets)
    stats = JudgeStats()
    stats.add(comparisons)
    return comparisons, stats, client


class _Set:
    def __init__(self, candidates):
        self.messages, self.candidates = [{"role": "user", "content": "Tell me about the sun."}], candidates


SETS = [_Set(["short", "a medium answer", "a much longer and more detailed answer"]),
        _Set(["tiny", "a considerably longer answer"])]


def test_judge_that_always_says_a_yields_only_ties(tmp_path):
    comparisons, stats, _ = judge_sets(always_a, tmp_path, SETS)
    assert {c.outcome for c in comparisons} == {"tie"}
    assert stats.consistency_rate == 0.0 and stats.first_position_rate == 1.0
    assert stats.to_dict()["ties_from_disagreement"] == stats.outcomes["tie"] == 4


def tie_when_b_shown_first(messages):
    """A judge that says tie whenever the longer answer is shown second (a position effect on ties)."""
    a, b = shown_answers(messages)
    return "[[A]]" if len(a) > len(b) else "[[C]]"


def test_a_tie_in_one_order_and_a_win_in_the_other_is_a_tie_counted_as_disagreement(tmp_path):
    """FastChat's MT-Bench rule (g1_winner != g2_winner -> tie): one order's tie does not let the other win."""
    comparisons, stats, _ = judge_sets(tie_when_b_shown_first, tmp_path, SETS)
    assert {c.outcome for c in comparisons} == {"tie"}
    report = stats.to_dict()
    assert report["ties_from_disagreement"] == 4 and report["consistency_rate"] == 0.0
    assert report["first_position_rate"] == 1.0  # its only decisive verdicts picked the first answer


def test_consistent_judge_keeps_its_verdicts(tmp_path):
    comparisons, stats, _ = judge_sets(prefers_longer, tmp_path, SETS)
    for c in comparisons:
        s = SETS[c.prompt_index]
        longer = c.x if len(s.candidates[c.x]) > len(s.candidates[c.y]) else c.y
        assert c.outcome == ("x" if longer == c.x else "y")
    assert stats.consistency_rate == 1.0 and stats.first_position_rate == 0.5


def test_unparseable_answers_are_retried_once_then_no_verdict(tmp_path):
    comparisons, stats, client = judge_sets(prose_then_verdict, tmp_path / "a", SETS)
    assert stats.retried == stats.judgments == 8 and stats.consistency_rate == 1.0
    assert client.calls == 16  # every judgment asked twice
    comparisons, stats, client = judge_sets(never_decides, tmp_path / "b", SETS)
    assert {c.outcome for c in comparisons} == {"no_verdict"} and stats.unparseable == 8
    assert stats.outcomes["y"] == 0  # an unreadable answer never becomes "B"


PARIS = [_Set(["The capital of France is Lyon.", "The capital of France is Paris."])]


def names_the_wrong_side_first(messages):
    """A judge writing prose without brackets: it names the wrong answer first, then concludes."""
    a, _ = shown_answers(messages)
    wrong, right = ("A", "B") if "Lyon" in a else ("B", "A")
    return f"Response {wrong} is wrong: the capital of France is Paris, not Lyon. The better answer is {right}."


def only_names_the_wrong_side(messages):
    a, _ = shown_answers(messages)
    if messages[-1]["content"] == RETRY_MESSAGE:
        return "[[B]]" if "Lyon" in a else "[[A]]"
    return f"Response {'A' if 'Lyon' in a else 'B'} is wrong: the capital of France is Paris, not Lyon."


def test_prose_verdict_naming_the_loser_first_chooses_the_right_answer(tmp_path):
    comparisons, stats, client = judge_sets(names_the_wrong_side_first, tmp_path, PARIS)
    (c,) = comparisons
    assert c.outcome == "y"  # y = "...Paris.", in both orders
    assert (c.first.verdict, c.second.verdict) == ("B", "A") and stats.consistency_rate == 1.0
    assert stats.retried == 0 and client.calls == 2


def test_a_remark_about_one_side_is_no_verdict_and_is_asked_again(tmp_path):
    comparisons, stats, client = judge_sets(only_names_the_wrong_side, tmp_path, PARIS)
    (c,) = comparisons
    assert c.outcome == "y" and stats.retried == 2 and client.calls == 4


def arena_hard_prefers_longer(messages):
    """An Arena-Hard style judge: strength labels, echoing the label list before its verdict."""
    a, b = shown_answers(messages)
    label = "A>>B" if len(a) > 2 * len(b) else "A>B" if len(a) > len(b) else "B>>A" if len(b) > 2 * len(a) else "B>A"
    return f"Labels: [[A>>B]], [[A>B]], [[A=B]], [[B>A]], [[B>>A]].\n\nMy final verdict is: [[{label}]]"


def test_an_arena_hard_style_judge_is_read_in_both_orders(tmp_path):
    comparisons, stats, client = judge_sets(arena_hard_prefers_longer, tmp_path, SETS)
    for c in comparisons:
        s = SETS[c.prompt_index]
        assert c.outcome == ("x" if len(s.candidates[c.x]) > len(s.candidates[c.y]) else "y")
    assert stats.consistency_rate == 1.0 and stats.first_position_rate == 0.5
    assert stats.retried == 0 and stats.unparseable == 0 and client.calls == 8


def test_cache_means_no_judgment_is_paid_twice(tmp_path):
    _, _, first = judge_sets(prefers_longer, tmp_path, SETS)
    comparisons, stats, again = judge_sets(prefers_longer, tmp_path, SETS)
    assert first.calls == 8 and again.calls == 0 and stats.cached == 8
    assert {c.outcome for c in comparisons} <= {"x", "y"}


def scripted_judge_app(policy, name="judge-model", refuse_logprobs=None):
    """A tiny OpenAI-compatible server answering with `policy`, with verdict log-probs when asked
    (or, with `refuse_logprobs`, an HTTP 400 with that message to any request asking for them)."""
    app, requests = FastAPI(), []

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "test"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        requests.append(body)
        text = (400, refuse_logprobs) if refuse_logprobs and body.get("logprobs") else policy(body["messages"])
        if isinstance(text, int):  # the policy answers with an HTTP error status
            text = (text, "refused")
        if isinstance(text, tuple):  # (HTTP error status, message)
            return JSONResponse({"error": {"message": text[1], "type": "invalid_request_error"}}, text[0])
        logprobs = None
        parsed = parse_verdict(text)
        if body.get("logprobs") and parsed:
            at = parsed.position
            top = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in
                   [(parsed.verdict, 0.8), ({"A": "B", "B": "A", "C": "A"}[parsed.verdict], 0.15), ("C", 0.05)]]
            logprobs = {"content": [
                {"token": text[:at], "logprob": -0.1, "bytes": None, "top_logprobs": []},
                {"token": text[at], "logprob": math.log(0.8), "bytes": None, "top_logprobs": top},
                {"token": text[at + 1:], "logprob": -0.1, "bytes": None, "top_logprobs": []}]}
        return {"id": "x", "object": "chat.completion", "created": 0, "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                             "logprobs": logprobs}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107}}

    return app, requests


def write_candidates(path, sets):
    path.write_text("".join(json.dumps({"id": f"p{i}", "messages": s.messages, "candidates": s.candidates,
                                        "model": "policy"}) + "\n" for i, s in enumerate(sets)))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_judge_command_max_min_with_an_endpoint_judge(tmp_path):
    app, requests = scripted_judge_app(prefers_longer)
    cands = write_candidates(tmp_path / "cands.jsonl", SETS)
    out = tmp_path / "prefs.jsonl"
    with BackgroundServer(app) as server:
        assert judge_command(candidates=str(cands), out=str(out), judge=server.url, pairing="max_min") == 0
        paid = len(requests)
        assert judge_command(candidates=str(cands), out=str(tmp_path / "again.jsonl"), judge=server.url,
                             cache=str(tmp_path / "prefs.judge-cache.jsonl")) == 0
    assert paid == 8 and len(requests) == paid  # rerun fully cached
    records = read_jsonl(out)
    assert [(r["chosen"], r["rejected"]) for r in records] == [
        ("a much longer and more detailed answer", "short"), ("a considerably longer answer", "tiny")]
    first = records[0]
    assert first["judge"] == "judge-model" and first["judge_kind"] == "llm"
    assert first["judge_verdicts"] == {"chosen_shown_first": "A", "rejected_shown_first": "B"}
    assert first["judge_soft"]["chosen"] == pytest.approx(0.8) and first["conversations"][0]["from"] == "user"
    assert len(load_pairs(str(out)).pairs) == 2  # the data layer reads it back as seed-format pairs
    report = json.loads((tmp_path / "prefs.report.json").read_text())
    assert report["consistency_rate"] == 1.0 and report["first_position_rate"] == 0.5
    assert report["usage"] == {"requests": 8, "prompt_tokens": 800, "completion_tokens": 56, "total_tokens": 856}
    assert requests[0]["temperature"] == 0 and requests[0]["logprobs"] is True


def test_failed_requests_fail_the_run_and_a_rerun_pays_only_for_them(tmp_path):
    broken = {"on": True}

    def flaky(messages):
        return 400 if broken["on"] and "tiny" in messages[0]["content"] else prefers_longer(messages)

    app, requests = scripted_judge_app(flaky)
    cands = write_candidates(tmp_path / "cands.jsonl", SETS)
    out = tmp_path / "prefs.jsonl"
    with BackgroundServer(app) as server:
        assert judge_command(candidates=str(cands), out=str(out), judge=server.url) == 1
        report = json.loads((tmp_path / "prefs.report.json").read_text())
        assert report["pairs_written"] == 1 and report["left_out"] == {"failed": 1}
        assert report["soft_verdicts_requested"] is True  # a 400 that is not about log-probs keeps them on
        paid = len(requests)
        broken["on"] = False
        assert judge_command(candidates=str(cands), out=str(out), judge=server.url) == 0
    assert len(requests) - paid == 2 and len(read_jsonl(out)) == 2


def test_an_endpoint_without_logprobs_is_judged_without_them(tmp_path):
    app, requests = scripted_judge_app(prefers_longer, refuse_logprobs="logprobs is not supported by this model")
    cands = write_candidates(tmp_path / "cands.jsonl", SETS)
    with BackgroundServer(app) as server:
        assert judge_command(candidates=str(cands), out=str(tmp_path / "prefs.jsonl"), judge=server.url) == 0
    report = json.loads((tmp_path / "prefs.report.json").read_text())
    assert report["soft_verdicts_requested"] is False and report["pairs_written"] == 2
    assert report["left_out"] == {} and report["with_soft_verdict"] == 0
    assert requests[0]["logprobs"] is True and "logprobs" not in requests[-1]


def test_judge_command_keeps_ties_apart_when_asked(tmp_path):
    app, _ = scripted_judge_app(always_a)
    cands = write_candidates(tmp_path / "cands.jsonl", SETS)
    out = tmp_path / "prefs.jsonl"
    with BackgroundServer(app) as server:
        assert judge_command(candidates=str(cands), out=str(out), judge=server.url, pairing="all_pairs",
                             keep_ties=True) == 0
    assert out.read_text() == ""
    ties = read_jsonl(tmp_path / "prefs.ties.jsonl")
    assert len(ties) == 4 and {t["outcome"] for t in ties} == {"tie"} and "chosen" not in ties[0]
    report = json.loads((tmp_path / "prefs.report.json").read_text())
    assert report["left_out"] == {"tie": 4} and report["consistency_rate"] == 0.0


def test_random_pairing_judges_one_pair_per_prompt(tmp_path):
    app, requests = scripted_judge_app(prefers_longer)
    cands = write_candidates(tmp_path / "cands.jsonl", SETS)
    with BackgroundServer(app) as server:
        assert judge_command(candidates=str(cands), out=str(tmp_path / "p.jsonl"), judge=server.url,
                             pairing="random", seed=3) == 0
    assert len(requests) == 4 and len(read_jsonl(tmp_path / "p.jsonl")) == 2


def test_judge_options_are_checked(tmp_path):
    cands = write_candidates(tmp_path / "c.jsonl", SETS)
    with pytest.raises(ConfigError, match="exactly one judge"):
        judge_command(candidates=str(cands), out=str(tmp_path / "o.jsonl"))
    with pytest.raises(ConfigError, match="min-margin"):
        judge_command(candidates=str(cands), out=str(tmp_path / "o.jsonl"), judge="http://127.0.0.1:9", min_margin=1)


# ------------------------------------------------------------------------------------------ reward model


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    import torch
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    from prefloop.testing import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("reward") / "rm"
    Qwen2ForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_reward_model_scores_match_one_at_a_time(reward_model_dir):
    from prefloop.judge.reward import RewardModel

    rm = RewardModel(str(reward_model_dir), batch_size=4)
    items = [(s.messages, c) for s in SETS for c in s.candidates]
    batched = rm.score(items)
    alone = [rm.score([item])[0] for item in items]
    assert batched == pytest.approx(alone, abs=1e-5)
    assert len(set(round(v, 6) for v in batched)) == len(items)


def test_reward_model_max_min_pairs_best_with_worst(reward_model_dir, tmp_path):
    from prefloop.judge.reward import RewardModel

    cands = write_candidates(tmp_path / "c.jsonl", SETS)
    out = tmp_path / "prefs.jsonl"
    assert judge_command(candidates=str(cands), out=str(out), reward_model=str(reward_model_dir)) == 0
    rm = RewardModel(str(reward_model_dir))
    records = read_jsonl(out)
    assert len(records) == 2
    for s, r in zip(SETS, records):
        scores = rm.score([(s.messages, c) for c in s.candidates])
        best, worst = max(range(len(scores)), key=scores.__getitem__), min(range(len(scores)), key=scores.__getitem__)
        assert (r["chosen"], r["rejected"]) == (s.candidates[best], s.candidates[worst])
        assert r["margin"] == pytest.approx(scores[best] - scores[worst], abs=1e-5)
        assert r["judge_kind"] == "reward_model" and r["scores"]["chosen"] > r["scores"]["rejected"]

    all_pairs = tmp_path / "all.jsonl"
    assert judge_command(candidates=str(cands), out=str(all_pairs), reward_model=str(reward_model_dir),
                         pairing="all_pairs") == 0
    assert len(read_jsonl(all_pairs)) == 4
    high = max(r["margin"] for r in records)
    assert judge_command(candidates=str(cands), out=str(tmp_path / "m.jsonl"), reward_model=str(reward_model_dir),
                         min_margin=high + 1e-3) == 0
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert report["pairs_written"] == 0 and report["left_out"] == {"below_min_margin": 2}


# ------------------------------------------------------------------------------------------ end to end


def test_judge_against_prefloop_serve_and_a_local_model(tiny_model_dir, tmp_path):
    """The tiny random model is a hopeless judge: what matters is that every comparison is accounted
    for, nothing unreadable becomes a pair, and both kinds of judge run the same way."""
    from prefloop.sampling import LocalGenerator
    from prefloop.serve.app import create_app
    from prefloop.serve.engine import GenerationEngine

    cands = write_candidates(tmp_path / "c.jsonl", SETS)
    engine = GenerationEngine(LocalGenerator.load(str(tiny_model_dir)))
    try:
        with BackgroundServer(create_app(engine, "tiny", max_tokens_limit=2048)) as server:
            assert judge_command(candidates=str(cands), out=str(tmp_path / "served.jsonl"), judge=server.url,
                                 pairing="all_pairs", max_tokens=12) == 0
    finally:
        engine.close()
    served = json.loads((tmp_path / "served.report.json").read_text())
    assert served["judge"] == "tiny" and served["comparisons"] == 4 and served["judgments"] == 8
    assert served["pairs_written"] + sum(served["left_out"].values()) == 4
    assert served["usage"]["requests"] >= 8 and served["usage"]["completion_tokens"] > 0
    for record in read_jsonl(tmp_path / "served.jsonl"):
        assert None not in record["judge_verdicts"].values()

    assert judge_command(candidates=str(cands), out=str(tmp_path / "local.jsonl"), judge=str(tiny_model_dir),
                         pairing="all_pairs", max_tokens=12) == 0
    local = json.loads((tmp_path / "local.report.json").read_text())
    assert local["judge"] == "model" and local["judgments"] == 8
    assert local["pairs_written"] + sum(local["left_out"].values()) == 4


# ------------------------------------------------------------------------------------------ agreement


def test_cohens_kappa_by_hand():
    assert cohen_kappa(["first", "second"], ["first", "second"]) == 1.0
    # 3 of 4 agree; marginals human (3 first, 1 second), judge (2, 2): p_e = (3*2 + 1*2) / 16 = 0.5
    human, judge = ["first", "first", "first", "second"], ["first", "first", "second", "second"]
    assert cohen_kappa(human, judge) == pytest.approx((0.75 - 0.5) / 0.5)


def test_judge_agreement_with_human_votes(tmp_path, capsys):
    app, _ = scripted_judge_app(prefers_longer)
    cands = write_candidates(tmp_path / "c.jsonl", SETS)
    out = tmp_path / "prefs.jsonl"
    with BackgroundServer(app) as server:
        assert judge_command(candidates=str(cands), out=str(out), judge=server.url, pairing="all_pairs") == 0
    db = tmp_path / "votes.sqlite"
    with Store(db) as store:
        prompt = SETS[0].messages
        long, medium, short = SETS[0].candidates[2], SETS[0].candidates[1], SETS[0].candidates[0]
        agree = store.add_label_item(prompt, short, long)  # judge prefers long = b
        disagree = store.add_label_item(prompt, medium, short)  # judge prefers medium = a
        other = store.add_label_item([{"role": "user", "content": "unrelated"}], "x", "y")
        store.add_vote(agree, "ana", "b", "ab")
        store.add_vote(agree, "bo", "b", "ba")
        store.add_vote(disagree, "ana", "b", "ab")
        store.add_vote(disagree, "bo", "skip", "ab")
        store.add_vote(other, "ana", "a", "ab")
    assert judge_agreement_command(human=str(db), judge=str(out)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["votes_compared"] == 3 and report["items_compared"] == 2
    assert report["agreement"] == pytest.approx(2 / 3)
    assert report["skipped_votes"] == 1 and report["votes_without_judge_outcome"] == 1
    # human: second x3; judge: second x2, first x1 -> chance agreement 2/3 = observed agreement -> kappa 0
    assert report["cohens_kappa"] == pytest.approx(0.0)


GOOD_PREF = json.dumps({"conversations": [{"from": "user", "value": "q"}], "chosen": "a", "rejected": "b"})


@pytest.mark.parametrize("file, lines, message", [
    ("prefs.jsonl", [GOOD_PREF, '{"conversations": [{"from": "user", "value": "q"}], "chosen": "a'],
     r"prefs.jsonl:2: malformed JSON at column 63: unterminated string"),
    ("prefs.jsonl", [GOOD_PREF, "[1, 2]"], r"prefs.jsonl:2: expected a JSON object, got list"),
    ("prefs.jsonl", [GOOD_PREF, '{"conversations": [{"from": "user", "value": "q"}], "chosen": "a"}'],
     r"prefs.jsonl:2: not a preference pair: field 'rejected': missing field 'rejected'"),
    ("prefs.ties.jsonl", ['{"outcome": "tie", "messages": [{"role": "user", "content": "q"}], "response_a": "x"}'],
     r"prefs.ties.jsonl:1: field 'response_b' is missing or malformed"),
    ("prefs.ties.jsonl", ["{oops"], r"prefs.ties.jsonl:1: malformed JSON at column 2"),
])
def test_judge_agreement_reports_a_bad_line_with_its_place(tmp_path, capsys, file, lines, message):
    from prefloop.cli import main

    db = tmp_path / "votes.sqlite"
    with Store(db):
        pass
    (tmp_path / "prefs.jsonl").write_text(GOOD_PREF + "\n")
    (tmp_path / file).write_text("\n".join(lines) + "\n")
    assert main(["judge-agreement", "--human", str(db), "--judge", str(tmp_path / "prefs.jsonl")]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err


def test_judge_agreement_on_a_file_that_is_not_a_store_is_a_located_error(tmp_path, capsys):
    from prefloop.cli import main

    not_a_store = tmp_path / "votes.sqlite"
    not_a_store.write_text("these are not votes\n" * 100)
    (tmp_path / "prefs.jsonl").write_text(GOOD_PREF + "\n")
    assert main(["judge-agreement", "--human", str(not_a_store), "--judge", str(tmp_path / "prefs.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"{not_a_store} is not a SQLite database" in err and "point --human at" in err and "--db" not in err
    assert "Traceback" not in err


def test_judge_agreement_leaves_out_judge_pairs_whose_answers_carry_more_than_text(tmp_path, capsys):
    """Human votes are on text-only answers: a judge pair whose answers differ in tool calls would match an
    item by text ('' vs '') and be compared with the wrong vote, so it is left out and reported."""
    from prefloop.judge.agreement import read_judge_outcomes

    call = [{"type": "function", "function": {"name": "w", "arguments": "{}"}}]
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        json.loads(GOOD_PREF),
        {"prompt": [{"role": "user", "content": "q"}],
         "chosen": [{"role": "assistant", "content": "", "tool_calls": call}],
         "rejected": [{"role": "assistant", "content": "", "reasoning_content": "hmm"}]},
    ]) + "\n")
    outcomes = read_judge_outcomes(path)
    assert list(outcomes.values()) == ["first"] and len(outcomes) == 1
    err = capsys.readouterr().err
    assert "1 judge pair(s)" in err and f"{path}:2" in err
    assert "chosen.tool_calls" in err and "rejected.reasoning_content" in err
