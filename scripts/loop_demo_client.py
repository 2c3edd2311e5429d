"""The users of the loop demo (scripts/loop_demo.sh): send prompts to `prefloop serve` through the real `openai`
client and give feedback on the answers, as a chat front end would.

    python scripts/loop_demo_client.py --base-url http://127.0.0.1:PORT/v1 --prompts examples/loop/user_prompts.jsonl

Each prompt is one conversation (`conversation_id` user-N), sent by --users users at once (the server batches
them); the feedback follows, in prompt order. Every third prompt asks for two answers (n=2) and
sends an A/B choice; the others ask for one answer and send a thumbs up or down. The scripted user's taste is
fixed and simple, so the run repeats: an answer cut off by the token limit is worse than one that finished;
between two that both finished (or both did not), the shorter is preferred (thumbs down: cut off). It stands
in for people; it is not a judgment of quality.

Feedback goes to the server's `POST /v1/feedback` (README, 'Labeling, judging, serving') through the same
`openai` client (`client.post`), with the `interaction_id` the server returns with each choice.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai


def preferred(choices) -> int:
    """Index of the answer the scripted user prefers: finished before the token limit first, then shorter."""
    return min(range(len(choices)), key=lambda i: (choices[i].finish_reason != "stop",
                                                   len(choices[i].message.content or "")))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", required=True, help="the server's OpenAI base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--prompts", required=True, help="JSONL with a 'prompt' per line")
    p.add_argument("--model", default="smollm2", help="model name sent in the request")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--users", type=int, default=4, help="requests in flight at once")
    args = p.parse_args(argv)

    client = openai.OpenAI(base_url=args.base_url, api_key="unused", max_retries=0, timeout=1200)
    prompts = [json.loads(line)["prompt"] for line in open(args.prompts, encoding="utf-8") if line.strip()]

    def ask(n: int):
        return client.chat.completions.create(
            model=args.model, messages=[{"role": "user", "content": prompts[n]}], max_tokens=args.max_tokens,
            temperature=0.8, seed=n, n=2 if n % 3 == 2 else 1, extra_body={"conversation_id": f"user-{n}"})

    # several users at once, as a chat front end sends them: the server batches their requests
    with ThreadPoolExecutor(args.users) as pool:
        responses = list(pool.map(ask, range(len(prompts))))
    counts = {"requests": len(responses), "answers": 0, "thumbs_up": 0, "thumbs_down": 0, "choices": 0}
    for n, (prompt, resp) in enumerate(zip(prompts, responses)):
        counts["answers"] += len(resp.choices)
        ids = [c.model_extra["interaction_id"] for c in resp.choices]
        if len(resp.choices) == 2:
            best = preferred(resp.choices)
            body = {"interaction_id": ids[best], "other_interaction_id": ids[1 - best], "value": "this",
                    "annotator": "demo-user"}
            counts["choices"] += 1
            shown = f"A/B: prefers answer {best + 1}"
        else:
            c = resp.choices[0]
            value = "up" if c.finish_reason == "stop" and (c.message.content or "").strip() else "down"
            body = {"interaction_id": ids[0], "kind": "thumbs", "value": value, "annotator": "demo-user"}
            counts[f"thumbs_{value}"] += 1
            shown = f"thumbs {value}"
        client.post("/feedback", body=body, cast_to=httpx.Response)
        first = (resp.choices[0].message.content or "").replace("\n", " ")
        print(f"[client] {prompt[:48]!r:52} -> {first[:60]!r} ... ({shown})")
    print("[client] " + ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
