"""The steps of one online-loop iteration, each resumable, each reusing the command that does its job.

    collect  -> interaction and feedback id ranges logged by `prefloop serve` since the last iteration
    sample   -> prompts.jsonl: prompts chosen for labeling (strategy, de-duplicated, capped per conversation,
                personal data scrubbed; low_confidence: the ones the judge is least sure about, `confidence.py`)
    generate -> candidates.jsonl: K answers per prompt from the champion (`prefloop generate`, seeded), locally
                or through the serving endpoint (`served.py`)
    label    -> judged.jsonl: best vs worst of K (or all decisive pairs) by the AI judge (both orders), a reward
                model, or people voting in the label app (`loop/labeling.py`)
    pairs    -> pairs.jsonl: judged pairs + pairs from user feedback + the replay share of older pairs
    train    -> a candidate version of NAME, trained from the champion (reference = champion), parent = champion
    eval     -> eval/results.json: win rate of the candidate against the champion (`prefloop eval winrate`)
    gate     -> the gate verdict, recorded on the candidate (`prefloop gate`), and gate-report.md
    promote  -> the candidate becomes the champion on pass (with promote.auto); on fail the champion stays

Resuming: a step is done when its row is in the store's `loop_steps` (written last, once); a rerun skips
done steps and redoes the first unfinished one. Each step's files are written atomically or by
commands that resume themselves (generate, judge and eval cache what they finished), and the train
step looks for the version it registered before a crash (the version's meta names the iteration), so
no second candidate is ever registered and no pair is counted twice.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path
from typing import Callable

from prefloop.errors import PrefloopError
from prefloop.loop.config import LoopConfig
from prefloop.loop.feedback_pairs import feedback_pairs, pair_key
from prefloop.loop.scrub import Scrubber
from prefloop.output_files import write_atomically
from prefloop.prompts import prompt_key
from prefloop.store import Store

STEPS = ("collect", "sample", "generate", "label", "pairs", "train", "eval", "gate", "promote")

Hook = Callable[[str, str], None]  # hook(step, phase) with phase "start" or "before_record"


class LoopError(PrefloopError):
    """A step cannot run: a missing champion, an earlier step not done, a command that failed."""


class LoopWaiting(LoopError):
    """The label step waits for people's votes (human modes, before the deadline); rerun later."""


def _say(text: str) -> None:
    print(f"prefloop loop: {text}", file=sys.stderr)


def _write_jsonl(path: Path, records: list[dict]) -> None:
    write_atomically(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class Iteration:
    """One iteration of the loop NAME: its store row, its folder and the runner of its steps."""

    def __init__(self, cfg: LoopConfig, store: Store, hook: Hook | None = None):
        self.cfg, self.store, self.hook = cfg, store, hook
        self.row = store.open_loop_iteration(cfg.name, cfg.to_dict())
        self.dir = Path(cfg.workdir) / f"iter-{self.row['number']:04d}"
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def done(self) -> dict[str, dict]:
        return self.store.loop_steps(self.row["id"])

    def outputs(self, step: str) -> dict:
        done = self.done
        if step not in done:
            raise LoopError(f"iteration {self.row['number']}: step {step!r} is not done yet; run `prefloop loop "
                            f"{self.cfg.source} --step {step}` (or the whole iteration) first")
        return done[step]["outputs"]

    def run(self, step: str) -> dict:
        """Run `step` unless it is recorded as done; returns its outputs."""
        done = self.done
        if step in done:
            _say(f"iteration {self.row['number']}: {step} already done")
            return done[step]["outputs"]
        missing = [s for s in STEPS[: STEPS.index(step)] if s not in done]
        if missing:
            raise LoopError(f"iteration {self.row['number']}: {step} needs {', '.join(missing)} first; run "
                            f"`prefloop loop {self.cfg.source}` to run the iteration in order")
        _say(f"iteration {self.row['number']}: {step} ...")
        if self.hook:
            self.hook(step, "start")
        inputs, outputs = getattr(self, f"_{step}")()
        if self.hook:
            self.hook(step, "before_record")
        self.store.record_loop_step(self.row["id"], step, inputs, outputs)
        _say(f"iteration {self.row['number']}: {step} done: {json.dumps(outputs, default=str)[:300]}")
        return outputs

    # ------------------------------------------------------------------ helpers

    def champion(self) -> dict:
        from prefloop.registry.follow import champion

        return champion(self.store, self.cfg.name)

    def previous_iterations(self) -> list[dict]:
        return [i for i in self.store.loop_iterations(self.cfg.name) if i["number"] < self.row["number"]]

    # ------------------------------------------------------------------ steps

    def _collect(self):
        last_interaction = last_feedback = 0
        for it in self.previous_iterations():
            c = it["steps"].get("collect")
            if c:
                last_interaction = max(last_interaction, c["outputs"]["to_interaction_id"])
                last_feedback = max(last_feedback, c["outputs"]["to_feedback_id"])
        return ({"from_interaction_id": last_interaction, "from_feedback_id": last_feedback},
                self.store.interaction_log_summary(last_interaction, last_feedback))

    def _collected(self) -> tuple[dict[int, dict], list[dict], int]:
        """(interactions of this iteration by id, its feedback rows, how many interactions were left out
        because their conversation was forgotten)."""
        c = self.outputs("collect")
        frm = self.done["collect"]["inputs"]
        forgotten = self.store.forgotten_conversations()
        in_range = [i for i in self.store.interactions()
                    if frm["from_interaction_id"] < i["id"] <= c["to_interaction_id"]]
        interactions = {i["id"]: i for i in in_range if i["conversation_id"] not in forgotten}
        feedback = [f for f in self.store.feedback() if frm["from_feedback_id"] < f["id"] <= c["to_feedback_id"]]
        return interactions, feedback, len(in_range) - len(interactions)

    def _sample(self):
        s = self.cfg.sample
        interactions, feedback, n_forgotten = self._collected()
        flagged = {i for f in feedback if f["kind"] == "choice" or f["value"] == "down"
                   for i in (f["interaction_id"], f["other_interaction_id"]) if i is not None}
        order = sorted(interactions.values(), key=lambda i: i["id"])
        limit = s["size"]
        if s["strategy"] == "low_confidence":  # a pool of the newest prompts; the judge's doubt chooses below
            from prefloop.loop.confidence import pool_size

            order.reverse()
            limit = pool_size(s)
        elif s["strategy"] == "recent":
            order.reverse()
        elif s["strategy"] == "random":
            random.Random(s["seed"]).shuffle(order)
        else:  # feedback_first: flagged (thumbs-down, A/B choices) first, newest first within each group
            order = sorted(order, key=lambda i: (i["id"] not in flagged, -i["id"]))
        scrub = Scrubber(s["scrub_pii"], s["pii_hook"])
        seen: set[str] = set()
        per_conversation: dict[str, int] = {}
        skipped = {"forgotten_conversation": n_forgotten, "duplicate_prompt": 0, "conversation_cap": 0,
                   "over_size": 0}
        chosen = []
        for i in order:
            key = _near_duplicate_key(i["messages"])
            if key in seen:
                skipped["duplicate_prompt"] += 1
                continue
            if per_conversation.get(i["conversation_id"], 0) >= s["per_conversation"]:
                skipped["conversation_cap"] += 1
                continue
            if len(chosen) >= limit:
                skipped["over_size"] += 1
                continue
            seen.add(key)
            per_conversation[i["conversation_id"]] = per_conversation.get(i["conversation_id"], 0) + 1
            chosen.append({"id": f"i{i['id']}", "messages": scrub.messages(i["messages"]),
                           "interaction_id": i["id"], "conversation_id": i["conversation_id"],
                           "flagged": i["id"] in flagged})
        confidence = None
        if s["strategy"] == "low_confidence":
            from prefloop.loop.confidence import least_confident

            pool = len(chosen)
            chosen, confidence = least_confident(self, chosen)
            skipped["judge_more_confident"] = pool - len(chosen)
        path = self.dir / "prompts.jsonl"
        _write_jsonl(path, chosen)
        return ({"interactions": len(interactions), "strategy": s["strategy"],
                 "forgotten_conversations": len(self.store.forgotten_conversations())},
                {"file": str(path), "prompts": len(chosen), "flagged": sum(r["flagged"] for r in chosen),
                 "skipped": skipped, "scrubbed": dict(scrub.counts),
                 **({"confidence": confidence} if confidence is not None else {})})

    def _generate(self):
        from prefloop.generate import generate_command

        g = self.cfg.generate
        prompts = self.outputs("sample")
        out = self.dir / "candidates.jsonl"
        champ = self.champion()
        if prompts["prompts"] == 0:
            out.write_text("")
            return {"champion_id": champ["id"]}, {"file": str(out), "prompts": 0}
        target, endpoint = champ["path"], {}
        if g["endpoint"]:  # the serving endpoint answers, once it is shown to serve the champion
            from prefloop.loop.served import drop_answers_of_others, endpoint_options

            target, endpoint = g["endpoint"], endpoint_options(self.cfg, champ)
        code = generate_command(target, prompts["file"], str(out), n=g["k"], temperature=g["temperature"],
                                top_p=g["top_p"], max_new_tokens=g["max_new_tokens"], batch_size=g["batch_size"],
                                seed=g["seed"], **endpoint)
        if endpoint:
            drop_answers_of_others(self.cfg, out, champ)
        if code != 0:
            raise LoopError(f"generate failed for some prompts (see above); rerun: finished prompts are kept in {out}")
        return ({"champion_id": champ["id"], "prompts_file": prompts["file"], "k": g["k"],
                 **({"endpoint": g["endpoint"]} if g["endpoint"] else {})},
                {"file": str(out), "prompts": len(_read_jsonl(out))})

    def _label(self):
        from prefloop.loop.labeling import label_by_people, machine_label

        lab = self.cfg.label
        cands = self.outputs("generate")
        out = self.dir / "judged.jsonl"
        if cands["prompts"] == 0:
            out.write_text("")
            return {"mode": lab["mode"]}, {"file": str(out), "pairs": 0}
        if lab["mode"] in ("judge", "reward_model"):
            champ = self.store.model_version(self.done["generate"]["inputs"]["champion_id"])
            pairs, left_out = machine_label(lab, Path(cands["file"]), out, champ["path"])
            return ({"mode": lab["mode"], "judge": lab["reward_model"] if lab["mode"] == "reward_model"
                     else lab["judge"], "candidates": cands["file"], "pairing": lab["pairing"]},
                    {"file": str(out), "pairs": pairs, "left_out": left_out})
        return label_by_people(self, Path(cands["file"]), out)

    def _pairs(self):
        interactions, feedback, _ = self._collected()
        scrub = Scrubber(self.cfg.sample["scrub_pii"], self.cfg.sample["pii_hook"])
        judged = _read_jsonl(Path(self.outputs("label")["file"]))
        judged_best = {}
        for r in judged:
            judged_best[prompt_key(_messages_of(r))] = r["chosen"]
        clean = {k: {**i, "messages": scrub.messages(i["messages"]), "response": scrub.text(i["response"])}
                 for k, i in interactions.items()}
        from_feedback, skipped = feedback_pairs(clean, feedback, judged_best)
        new: dict[str, dict] = {}
        for r in judged:
            given = r.get("provenance") or {"source": "judge:best_vs_worst", "judge": r.get("judge")}
            r = {**r, "provenance": {**given, "iteration": self.row["number"]}}
            r["id"] = pair_key(_messages_of(r), r["chosen"], r["rejected"])
            new.setdefault(r["id"], r)
        for r in from_feedback:
            r["provenance"]["iteration"] = self.row["number"]
            if r["id"] in new:
                skipped["same_as_judged_pair"] += 1
            new.setdefault(r["id"], r)
        older = {}
        for it in self.previous_iterations():
            p = it["steps"].get("pairs")
            if p and Path(p["outputs"]["new_file"]).is_file():
                for r in _read_jsonl(Path(p["outputs"]["new_file"])):
                    if r["id"] not in new:
                        older.setdefault(r["id"], r)
        share = self.cfg.train["replay_share"]
        n_replay = min(len(older), round(share / (1 - share) * len(new))) if share else 0
        replay = random.Random(f"replay:{self.row['number']}").sample(sorted(older), n_replay) if n_replay else []
        new_path, train_path = self.dir / "pairs.new.jsonl", self.dir / "pairs.jsonl"
        _write_jsonl(new_path, list(new.values()))
        _write_jsonl(train_path, list(new.values()) + [{**older[k], "replay": True} for k in replay])
        by_source: dict[str, int] = {}
        for r in new.values():
            by_source[r["provenance"]["source"]] = by_source.get(r["provenance"]["source"], 0) + 1
        return ({"judged": str(self.outputs("label")["file"]), "feedback_rows": len(feedback)},
                {"new_file": str(new_path), "file": str(train_path), "new_pairs": len(new), "by_source": by_source,
                 "replay_pairs": len(replay), "older_pairs_available": len(older), "skipped": dict(skipped)})

    def _registered_candidate(self) -> dict | None:
        for v in self.store.model_versions(self.cfg.name):
            if (v["meta"].get("loop") or {}).get("iteration_id") == self.row["id"]:
                return v
        return None

    def _train(self):
        from prefloop.registry.commands import register_model
        from prefloop.train.run import train

        pairs = self.outputs("pairs")
        champ = self.champion()
        inputs = {"champion_id": champ["id"], "pairs_file": pairs["file"], "config": self.cfg.train["config"],
                  "overrides": self.cfg.train["overrides"]}
        existing = self._registered_candidate()
        if existing is not None:  # registered before a crash, not yet recorded: never a second candidate
            _say(f"found {existing['name']}:{existing['version']} registered by this iteration before an interruption")
            if not any(e["version_id"] == existing["id"] for e in self.store.alias_events(self.cfg.name, "candidate")):
                # killed between the registration and its @candidate move (two transactions): finish the move
                self.store.move_alias(self.cfg.name, "candidate", "set", existing["id"], note="registered")
            return inputs, {"candidate_id": existing["id"], "version": existing["version"], "resumed": True}
        if pairs["new_pairs"] + pairs["replay_pairs"] == 0:  # the iteration ends here; the next collects anew
            _say(f"iteration {self.row['number']}: no preference pairs to train on (sample, label and feedback gave "
                 "none); nothing is trained, the champion stays, and the next run starts a new iteration")
            return inputs, {"candidate_id": None, "skipped": "no pairs"}
        out = self.dir / "train"
        if out.exists():  # a run killed before registering: start it again from the champion
            shutil.rmtree(out)
        model = {"model_name_or_path": champ["path"], "ref_model": champ["path"]}
        adapter_cfg = Path(champ["path"]) / "adapter_config.json"
        if adapter_cfg.is_file():  # a LoRA champion: continue its adapter; the reference is base + that adapter
            base = json.loads(adapter_cfg.read_text(encoding="utf-8")).get("base_model_name_or_path")
            model = {"model_name_or_path": base, "adapter_name_or_path": champ["path"], "ref_model": base,
                     "ref_model_adapters": champ["path"]}
        settings = {**self.cfg.train["overrides"], **model, "dataset": pairs["file"], "output_dir": str(out)}
        if self.cfg.train["launcher"]:
            metrics = launched_training(self.cfg.train["launcher"], self.cfg.train["config"], settings, self.dir)
        else:
            metrics = train(self.cfg.train["config"], **settings)
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        version = register_model(self.store, str(out), self.cfg.name, parent=f"{champ['name']}:{champ['version']}",
                                 extra_meta={"loop": {"iteration_id": self.row["id"], "iteration": self.row["number"],
                                                      "pairs": pairs["file"]}}, metrics=numeric)
        return inputs, {"candidate_id": version["id"], "version": version["version"], "resumed": False}

    def _no_candidate(self) -> bool:
        return self.outputs("train")["candidate_id"] is None

    def _eval(self):
        from prefloop.evaluate.winrate import winrate_command

        if self._no_candidate():
            return {}, {"skipped": "no candidate"}
        e = self.cfg.eval
        cand = self.store.model_version(self.outputs("train")["candidate_id"])
        champ = self.store.model_version(self.done["train"]["inputs"]["champion_id"])
        out = self.dir / "eval"
        code = winrate_command(str(out), before=champ["path"], after=cand["path"], prompts=e["prompts"],
                               judge=e["judge"], judge_model=e["judge_model"], criteria=self.cfg.label["criteria"],
                               template_file=e["template_file"], judge_max_tokens=e["judge_max_tokens"],
                               max_new_tokens=e["max_new_tokens"], temperature=e["temperature"], seed=e["seed"],
                               resamples=e["resamples"], limit=e["limit"], show_answers=0)
        if code != 0:
            raise LoopError("some eval judgments failed (see above); rerun: answers and judgments are cached")
        metrics = json.loads((out / "results.json").read_text())["metrics"]
        return ({"candidate_id": cand["id"], "champion_id": champ["id"], "prompts": e["prompts"]},
                {"results": str(out / "results.json"), "win_rate": metrics.get("win_rate"),
                 "win_rate_ci_low": metrics.get("win_rate_ci_low"), "n_prompts": metrics.get("n_prompts")})

    def _gate(self):
        from prefloop.registry.gate import gate_command
        from prefloop.registry.versions import last_gate

        if self._no_candidate():
            return {}, {"skipped": "no candidate", "verdict": None}
        cand = self.store.model_version(self.outputs("train")["candidate_id"])
        results = self.outputs("eval")["results"]
        gate = last_gate(self.store, cand)
        if gate is None or gate["detail"].get("candidate_results") != [results]:
            gate_command([results], rules=self.cfg.gate["rules"], registry=self.cfg.name,
                         version=f"{cand['name']}:{cand['version']}", db=self.cfg.store)
            gate = last_gate(self.store, cand)
        report = self.dir / "gate-report.md"
        _write_text(report, gate_report(cand, gate, results))
        failed = [r["rule"] for r in gate["detail"].get("rows", []) if r["result"] == "fail"]
        return ({"candidate_id": cand["id"], "results": results},
                {"verdict": gate["note"], "reason": gate["detail"].get("reason"), "failed_rules": failed,
                 "report": str(report)})

    def _promote(self):
        from prefloop.registry.aliases import promote

        champ_id = self.store.aliases(self.cfg.name).get("champion")
        if self._no_candidate():
            return {}, {"promoted": False, "champion_id": champ_id, "why": "no pairs to train on this iteration"}
        gate = self.outputs("gate")
        cand = self.store.model_version(self.outputs("train")["candidate_id"])
        inputs = {"candidate_id": cand["id"], "verdict": gate["verdict"]}
        if champ_id == cand["id"]:  # promoted before an interruption: the same record as without one
            from prefloop.store import alias_stack

            moves = alias_stack(self.store.alias_events(self.cfg.name, "champion"))
            return inputs, {"promoted": True, "champion_id": cand["id"],
                            "previous_champion_id": moves[-2] if len(moves) > 1 else None}
        if gate["verdict"] != "pass":
            _say(f"gate {gate['verdict']}: the champion stays; see {gate['report']}")
            return inputs, {"promoted": False, "champion_id": champ_id, "why": f"gate {gate['verdict']}: "
                            f"{gate['reason']}", "failed_rules": gate["failed_rules"], "report": gate["report"]}
        if not self.cfg.promote["auto"]:
            return inputs, {"promoted": False, "champion_id": champ_id,
                            "why": f"promote.auto is false: promote by hand with `prefloop models promote "
                                   f"{cand['version']} --name {cand['name']} --db {self.cfg.store}`"}
        promote(self.store, f"{cand['name']}:{cand['version']}",
                note=f"loop iteration {self.row['number']}: gate pass")
        return inputs, {"promoted": True, "champion_id": cand["id"], "previous_champion_id": champ_id}


def launched_training(launcher: str, config: str, settings: dict, folder: Path) -> dict:
    """`prefloop train CONFIG KEY=VALUE ...` under a launcher (a command prefix such as `torchrun
    --nproc_per_node 8`, `accelerate launch --num_processes 2`, `srun ... torchrun ...` on a cluster with
    shared storage), the output in `folder/train.log`; returns the run's final metrics
    (`output_dir/all_results.json`, written by rank 0). Raises LoopError when the launched run fails."""
    import shlex
    import subprocess

    argv = shlex.split(launcher) + ["-m", "prefloop", "train", config]
    argv += [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in settings.items()]
    log = folder / "train.log"
    _say(f"training under the launcher: {shlex.join(argv)} (output: {log})")
    with log.open("w", encoding="utf-8") as fh:
        code = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT).returncode
    results = Path(settings["output_dir"]) / "all_results.json"
    if code != 0 or not results.is_file():
        tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-15:])
        raise LoopError(f"the launched training failed (exit {code}; {log}):\n{tail}rerun the loop to train again "
                        "from the champion")
    return json.loads(results.read_text(encoding="utf-8"))


def _messages_of(record: dict) -> list[dict]:
    """The prompt turns of a seed-format record (`conversations` with from/value) as role/content messages."""
    return [{"role": {"human": "user", "gpt": "assistant"}.get(t["from"], t["from"]), "content": t["value"]}
            for t in record["conversations"]]


def _near_duplicate_key(messages: list[dict]) -> str:
    """Prompts that differ only in case, whitespace and punctuation collapse to one key."""
    import re

    norm = [{"role": m.get("role"), "content": re.sub(r"[\W_]+", " ", str(m.get("content", ""))).strip().lower()}
            for m in messages]
    return prompt_key(norm)


def _write_text(path: Path, text: str) -> None:
    write_atomically(path, text)


def gate_report(cand: dict, gate: dict, results_path: str) -> str:
    """Markdown: the verdict, the rule table, the failed rules and the eval prompts the candidate lost."""
    d = gate["detail"]
    lines = [f"# Gate of {cand['name']}:{cand['version']}: {gate['note']}", "", d.get("reason", ""), "",
             "| rule | metric | value | threshold | result | why |", "|---|---|---|---|---|---|"]
    for r in d.get("rows", []):
        lines.append(f"| {r['rule']} | {r['metric']} | {r['value']} | {r['threshold']} | {r['result']} | {r['why']} |")
    failed = [r["rule"] for r in d.get("rows", []) if r["result"] == "fail"]
    lines += ["", "Failed rules: " + (", ".join(failed) if failed else "none")]
    results = json.loads(Path(results_path).read_text(encoding="utf-8"))
    lost = [p for p in results["details"]["per_prompt"] if p["outcome"] == "loss"]
    answers = Path(results_path).parent / "answers"
    texts = {}
    for role in ("after", "before"):
        f = answers / f"{role}.jsonl"
        if f.is_file():
            for r in _read_jsonl(f):
                texts[(role, r["id"])] = r
    lines += ["", f"## Prompts the candidate lost ({len(lost)})", ""]
    for p in lost[:20]:
        after, before = texts.get(("after", p["id"]), {}), texts.get(("before", p["id"]), {})
        prompt = (after.get("messages") or [{}])[-1].get("content", "")
        lines += [f"### {p['id']}", "", f"**Prompt:** {prompt}", "", f"**Candidate:** {after.get('text', '')}", "",
                  f"**Champion:** {before.get('text', '')}", ""]
    return "\n".join(lines) + "\n"


class _RunLock:
    """An exclusive lock on the loop's workdir (`flock` on WORKDIR/.lock) for the length of a run, so two
    `prefloop loop` processes never run the same step at once (which could train and register twice).
    The kernel drops it when the process dies, so a killed run leaves no stale lock."""

    def __init__(self, workdir: str):
        Path(workdir).mkdir(parents=True, exist_ok=True)
        self.path = Path(workdir) / ".lock"

    def __enter__(self):
        import fcntl
        import os

        self.fh = self.path.open("a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "unknown"
            self.fh.close()
            raise LoopError(f"another prefloop loop is running this loop (pid {holder}, lock {self.path}); wait for "
                            "it to finish (a killed run releases the lock at once)") from None
        self.fh.truncate(0)
        self.fh.write(str(os.getpid()))
        self.fh.flush()
        return self

    def __exit__(self, *exc):
        self.fh.close()


UNTIL = {"gated": "gate", "promoted": "promote"}  # --until: the last step to run


def run_loop(cfg: LoopConfig, step: str | None = None, hook: Hook | None = None, until: str = "promoted") -> dict:
    """Run the open iteration of `cfg.name` to its end, or through `until` ("gated": stop after the gate, the
    promote is left to a person), or only `step`; returns {"iteration", "outputs"}.

    Raises LoopError when another process is running the same loop, or a step cannot run."""
    if not Path(cfg.store).is_file():  # the loop starts from a registered champion: a missing store is a typo
        raise LoopError(f"store (loop.yaml): {cfg.store} does not exist; the loop starts from the champion of "
                        f"{cfg.name!r} in an existing store: check the path, or register and promote the starting "
                        f"model first (prefloop models register PATH --name {cfg.name} --db {cfg.store}; prefloop "
                        f"models promote v1 --name {cfg.name} --db {cfg.store})")
    with _RunLock(cfg.workdir), Store(cfg.store, option="store (loop.yaml)") as store:
        from prefloop.registry.follow import champion

        champion(store, cfg.name)  # no champion: a located error before any step runs
        it = Iteration(cfg, store, hook)
        outputs = {}
        for s in ([step] if step else STEPS[: STEPS.index(UNTIL[until]) + 1]):
            outputs[s] = it.run(s)
        return {"iteration": it.row["number"], "outputs": outputs}
