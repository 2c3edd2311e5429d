"""Pairwise LLM judging with position-bias correction.

Every comparison of answers x and y is judged twice: x shown as A, then y shown as A. The
verdicts are mapped back to x/y; if they agree that is the outcome, if they disagree the outcome
is a tie (the judge was swayed by position, not content). An answer the parser cannot read is
asked again once with a short follow-up; still unreadable, it is "no verdict" and the comparison
produces no pair. The report gives the judge's consistency rate (both orders agree) and its
first-position preference rate (how often a decisive verdict picks whichever answer came first;
0.5 is unbiased).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prefloop.chat_clients import ChatCall
from prefloop.judge.cache import JudgmentCache, judgment_key
from prefloop.judge.parse import parse_verdict, soft_verdict
from prefloop.judge.prompt import RETRY_MESSAGE, JudgePrompt
from prefloop.sampling import SamplingParams

TOP_LOGPROBS = 5


@dataclass
class Judgment:
    """One judge call for one shown order: its verdict ("A", "B", "C" or None), text and soft probabilities."""

    verdict: str | None
    text: str
    soft: dict | None = None
    retried: bool = False
    cached: bool = False
    error: str | None = None  # the request failed (after the client's retries); nothing was cached

    def to_cache(self) -> dict:
        return {"verdict": self.verdict, "text": self.text, "soft": self.soft, "retried": self.retried}


@dataclass
class Comparison:
    """Answers x and y (indices into one prompt's candidates) and the two judgments."""

    prompt_index: int
    x: int
    y: int
    first: Judgment | None = None  # x shown as A
    second: Judgment | None = None  # y shown as A

    @property
    def outcome(self) -> str:
        """"x", "y", "tie" (either both said tie or they disagreed), "no_verdict" or "failed"."""
        if self.first is None or self.second is None or self.first.error or self.second.error:
            return "failed"
        return combine(self.first.verdict, self.second.verdict)

    @property
    def soft(self) -> dict | None:
        """P(x better), P(y better), P(tie), averaged over both orders, when both have soft verdicts."""
        if not (self.first and self.second and self.first.soft and self.second.soft):
            return None
        a, b = self.first.soft, self.second.soft
        return {"x": (a["A"] + b["B"]) / 2, "y": (a["B"] + b["A"]) / 2, "tie": (a["C"] + b["C"]) / 2}


def refuses_logprobs(result) -> bool:
    """True when `result` is an HTTP 400 error whose message says the endpoint does not do log-probs."""
    if not isinstance(result, Exception) or getattr(result, "status_code", 0) != 400:
        return False
    body = getattr(result, "body", None)
    return "logprob" in f"{result} {body or ''}".lower()


def combine(first: str | None, second: str | None) -> str:
    """Outcome from the verdict with x shown first and the verdict with y shown first."""
    if first is None or second is None:
        return "no_verdict"
    from_first = {"A": "x", "B": "y", "C": "tie"}[first]
    from_second = {"A": "y", "B": "x", "C": "tie"}[second]
    return from_first if from_first == from_second else "tie"


@dataclass
class JudgeStats:
    comparisons: int = 0
    outcomes: dict = field(default_factory=lambda: {"x": 0, "y": 0, "tie": 0, "no_verdict": 0, "failed": 0})
    consistent: int = 0
    both_parsed: int = 0
    ties_from_disagreement: int = 0  # ties because the two orders disagreed (one of them may have said tie)
    first_position_wins: int = 0
    decisive_judgments: int = 0
    judgments: int = 0
    cached: int = 0
    retried: int = 0
    unparseable: int = 0
    soft: int = 0

    def add(self, comparisons: list[Comparison]) -> None:
        for c in comparisons:
            self.comparisons += 1
            self.outcomes[c.outcome] += 1
            judged = [j for j in (c.first, c.second) if j is not None and not j.error]
            if len(judged) == 2 and all(j.verdict for j in judged):
                self.both_parsed += 1
                agree = c.first.verdict == {"A": "B", "B": "A", "C": "C"}[c.second.verdict]
                self.consistent += agree
                self.ties_from_disagreement += not agree
            self.soft += c.soft is not None
            for j in judged:
                self.judgments += 1
                self.cached += j.cached
                self.retried += j.retried
                self.unparseable += j.verdict is None
                if j.verdict in ("A", "B"):
                    self.decisive_judgments += 1
                    self.first_position_wins += j.verdict == "A"

    @property
    def consistency_rate(self) -> float | None:
        return self.consistent / self.both_parsed if self.both_parsed else None

    @property
    def first_position_rate(self) -> float | None:
        return self.first_position_wins / self.decisive_judgments if self.decisive_judgments else None

    def to_dict(self) -> dict:
        return {"comparisons": self.comparisons, "outcomes": dict(self.outcomes),
                "consistency_rate": self.consistency_rate, "first_position_rate": self.first_position_rate,
                "ties_from_disagreement": self.ties_from_disagreement,
                "judgments": self.judgments, "from_cache": self.cached, "retried": self.retried,
                "no_verdict_after_retry": self.unparseable, "with_soft_verdict": self.soft}


class PairwiseJudge:
    """Asks an LLM (any chat client, see `chat_clients`) to compare answers, in both orders, with a cache."""

    def __init__(self, client, prompt: JudgePrompt, cache: JudgmentCache, max_tokens: int = 1024, seed: int = 0,
                 logprobs: bool = True):
        self.client, self.prompt, self.cache = client, prompt, cache
        self.max_tokens, self.seed, self.logprobs = max_tokens, seed, logprobs

    def _params(self) -> SamplingParams:
        return SamplingParams(self.max_tokens, temperature=0.0, seed=self.seed, logprobs=self.logprobs,
                              top_logprobs=TOP_LOGPROBS if self.logprobs else 0)

    def _key(self, messages, answer_a, answer_b) -> str:
        return judgment_key(self.client.name, self.prompt.fingerprint, messages, answer_a, answer_b,
                            {"max_tokens": self.max_tokens, "temperature": 0.0, "seed": self.seed})

    def _complete(self, calls: list[ChatCall]) -> dict:
        """index -> Completion or Exception; an endpoint that refuses logprobs is asked again without them.

        Only a 400 whose message is about log-probs switches them off (for the rest of the run); any
        other 400 (a prompt too long, a bad model name) stays that call's error and is reported.
        """
        results = dict(self.client.complete_many(calls))
        refused = [i for i, r in results.items() if refuses_logprobs(r)]
        if refused and self.logprobs:
            self.logprobs = False
            retry = [ChatCall(calls[i].messages, 1, self._params()) for i in refused]
            for k, result in self.client.complete_many(retry):
                results[refused[k]] = result
        return results

    def judge_shown(self, items: list[tuple[list[dict], str, str]]) -> list[Judgment]:
        """Judge (conversation, answer shown as A, answer shown as B) items; cached ones cost nothing."""
        out: list[Judgment | None] = [None] * len(items)
        todo: list[int] = []
        for i, (messages, a, b) in enumerate(items):
            hit = self.cache.get(self._key(messages, a, b))
            if hit is not None:
                out[i] = Judgment(hit["verdict"], hit["text"], hit.get("soft"), hit.get("retried", False), cached=True)
            else:
                todo.append(i)
        asks = [[{"role": "user", "content": self.prompt.render(*items[i])}] for i in todo]
        results = self._complete([ChatCall(m, 1, self._params()) for m in asks])
        unclear: list[int] = []
        for k, i in enumerate(todo):
            result = results[k]
            if isinstance(result, Exception):
                out[i] = Judgment(None, "", error=f"{type(result).__name__}: {result}")
                continue
            out[i] = self._read(result.texts[0], result.logprobs[0])
            if out[i].verdict is None:
                unclear.append(k)
        if unclear:  # one follow-up turn: show the judge its answer and ask for the verdict alone
            follow = [ChatCall(asks[k] + [{"role": "assistant", "content": out[todo[k]].text},
                                          {"role": "user", "content": RETRY_MESSAGE}], 1, self._params())
                      for k in unclear]
            retried = self._complete(follow)
            for n, k in enumerate(unclear):
                i, result = todo[k], retried[n]
                if isinstance(result, Exception):
                    out[i] = Judgment(None, out[i].text, retried=True, error=f"{type(result).__name__}: {result}")
                    continue
                second = self._read(result.texts[0], result.logprobs[0])
                out[i] = Judgment(second.verdict, out[i].text + "\n[retry] " + second.text, second.soft, retried=True)
        for k, i in enumerate(todo):
            if not out[i].error:
                self.cache.put(self._key(*items[i]), out[i].to_cache())
        return out

    @staticmethod
    def _read(text: str, logprobs) -> Judgment:
        parsed = parse_verdict(text)
        if parsed is None:
            return Judgment(None, text)
        return Judgment(parsed.verdict, text, soft_verdict(logprobs, parsed))

    def judge(self, comparisons: list[Comparison], candidate_sets) -> None:
        """Fill in both judgments of each comparison (x first, then y first)."""
        items = []
        for c in comparisons:
            s = candidate_sets[c.prompt_index]
            items.append((s.messages, s.candidates[c.x], s.candidates[c.y]))
            items.append((s.messages, s.candidates[c.y], s.candidates[c.x]))
        judgments = self.judge_shown(items)
        for n, c in enumerate(comparisons):
            c.first, c.second = judgments[2 * n], judgments[2 * n + 1]
