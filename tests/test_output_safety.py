"""Nothing written is ever lost: every command that writes a result file or folder (prefloop.output_files)
replaces it whole or not at all, never wipes data with an empty result, and never deletes a folder of the
user's files that it did not write."""

import json
import os

import pytest

from prefloop.cli import main
from prefloop.errors import ConfigError
from prefloop.output_files import check_output_dir, refuse_empty_replace, replace_dir, staging_dir, write_atomically
from prefloop.serve.background import BackgroundServer
from prefloop.store import Store


# ----------------------------------------------------------------------------------- the helpers themselves

def test_write_atomically_takes_text_bytes_or_a_writer_and_leaves_no_temporary(tmp_path):
    out = tmp_path / "sub" / "r.json"
    write_atomically(out, "text ü\n")
    assert out.read_text(encoding="utf-8") == "text ü\n"
    write_atomically(out, b"\x00bytes")
    assert out.read_bytes() == b"\x00bytes"
    write_atomically(out, lambda tmp: open(tmp, "w").write("writer\n"))
    assert out.read_text() == "writer\n" and [p.name for p in out.parent.iterdir()] == ["r.json"]

    def broken(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        write_atomically(out, broken)
    assert out.read_text() == "writer\n" and [p.name for p in out.parent.iterdir()] == ["r.json"]


def test_refuse_empty_replace_only_when_an_empty_result_would_replace_data(tmp_path):
    out = tmp_path / "o.jsonl"
    refuse_empty_replace(out, 0, "--out")  # no file: fine
    out.write_text("")
    refuse_empty_replace(out, 0, "--out")  # an empty file: nothing to lose
    out.write_text("data\n")
    refuse_empty_replace(out, 3, "--out")  # rows to write: fine
    with pytest.raises(ConfigError,
                       match=r"--out .*o.jsonl: the result is empty \(0 rows; all filtered\).*kept .*o.jsonl as it was"):
        refuse_empty_replace(out, 0, "--out", "all filtered")


def test_replace_dir_swaps_a_previous_output_and_refuses_a_foreign_folder(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"other files in it \(notes.txt\) and no marker.json"):
        check_output_dir(final, "marker.json", "--out", "merge")
    (final / "notes.txt").unlink()
    (final / "marker.json").write_text("{}")
    (final / "old.bin").write_text("old")
    assert check_output_dir(final, "marker.json", "--out", "merge") == final.resolve()
    tmp = staging_dir(final)
    (tmp / "marker.json").write_text("{}")
    (tmp / "new.bin").write_text("new")
    replace_dir(tmp, final)
    assert sorted(p.name for p in final.iterdir()) == ["marker.json", "new.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # neither the staging nor the old folder is left
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_output_dir(tmp_path / "afile", "marker.json", "--out", "merge")


# ----------------------------------------------------------------------- an empty result keeps the old file

def test_export_interactions_with_no_pairs_keeps_an_out_file_that_holds_data(tmp_path, capsys):
    db = tmp_path / "prefloop.sqlite"
    with Store(db) as store:
        store.log_interaction("c1", "m:v1", [{"role": "user", "content": "hi"}], "hello")  # no feedback: no pairs
    out = tmp_path / "fb.jsonl"
    out.write_text('{"earlier": "pairs"}\n')
    assert main(["export", "--interactions", "--db", str(db), "--out", str(out)]) == 2
    assert out.read_text() == '{"earlier": "pairs"}\n'
    err = capsys.readouterr().err
    assert "the result is empty (0 rows; 0 feedback rows on 1 interactions)" in err and "kept " in err


def test_data_check_write_clean_with_every_pair_removed_keeps_the_old_clean_file(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "q", "chosen": "Same.", "rejected": "Same."}) + "\n")
    clean = tmp_path / "clean.jsonl"
    clean.write_text('{"earlier": "clean pairs"}\n')
    assert main(["data", "check", str(data), "--write-clean", str(clean)]) == 2
    assert clean.read_text() == '{"earlier": "clean pairs"}\n'
    assert "--write-clean" in capsys.readouterr().err


def test_write_clean_onto_its_own_input_is_refused_and_the_input_kept(tmp_path, capsys):
    """`data check messy.jsonl --skip-bad-rows --write-clean messy.jsonl` replaced the input: the skipped bad rows
    (the ones the user was told to fix) were gone without a trace."""
    data = tmp_path / "messy.jsonl"
    text = (json.dumps({"prompt": "q", "chosen": "Good.", "rejected": "Bad."}) + "\n" + "{broken\n"
            + json.dumps({"prompt": "q2", "chosen": None, "rejected": "x"}) + "\n")
    data.write_text(text)
    link = tmp_path / "link.jsonl"
    link.symlink_to(data)
    for target in (data, link):  # also through a symlink to it
        assert main(["data", "check", str(data), "--skip-bad-rows", "--write-clean", str(target)]) == 2
        assert data.read_text() == text
        assert "is an input file" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["data", "check", "{data}", "--write-clean", "{dir}"],
    ["data", "pairs-from-ratings", "{ratings}", "--out", "{dir}"],
    ["generate", "--model", "{dir}", "--prompts", "{prompts}", "--out", "{dir}"],
])
def test_an_output_path_that_is_a_directory_is_a_clear_error(tmp_path, capsys, argv):
    """--write-clean / --out given a folder: exit 2 saying to give a file (was an IsADirectoryError traceback)."""
    files = {"data": tmp_path / "d.jsonl", "ratings": tmp_path / "r.jsonl", "prompts": tmp_path / "p.jsonl",
             "dir": tmp_path / "folder"}
    files["data"].write_text(json.dumps({"prompt": "q", "chosen": "Good.", "rejected": "Bad."}) + "\n")
    files["ratings"].write_text("".join(json.dumps({"prompt": "q", "response": r, "helpfulness": h}) + "\n"
                                        for r, h in (("Good.", 5), ("Bad.", 1))))
    files["prompts"].write_text(json.dumps({"prompt": "q"}) + "\n")
    files["dir"].mkdir()
    assert main([a.format(**files) for a in argv]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_pairs_from_ratings_with_no_pairs_keeps_the_old_file(tmp_path, capsys):
    src = tmp_path / "hs.jsonl"
    src.write_text(json.dumps({"prompt": "Alone.", "response": "Only answer.", "helpfulness": 3}) + "\n")
    out = tmp_path / "pairs.jsonl"
    out.write_text('{"earlier": "pairs"}\n')
    assert main(["data", "pairs-from-ratings", str(src), "--out", str(out)]) == 2
    assert out.read_text() == '{"earlier": "pairs"}\n'
    assert "the result is empty" in capsys.readouterr().err


def test_judge_with_no_pairs_keeps_the_earlier_pairs_file(tmp_path):
    from test_judge import SETS, always_a, prefers_longer, scripted_judge_app, write_candidates

    from prefloop.judge.run import judge_command

    cands = write_candidates(tmp_path / "cands.jsonl", SETS)
    out = tmp_path / "prefs.jsonl"
    app, _ = scripted_judge_app(prefers_longer)
    with BackgroundServer(app) as server:
        assert judge_command(candidates=str(cands), out=str(out), judge=server.url) == 0
    before = out.read_text()
    assert before
    app, _ = scripted_judge_app(always_a, name="another-judge")  # every comparison a tie: no pairs
    with BackgroundServer(app) as server:
        with pytest.raises(ConfigError, match=r"the result is empty \(0 rows.*left out: 2 no clear best"):
            judge_command(candidates=str(cands), out=str(out), judge=server.url)
    assert out.read_text() == before
    ties = tmp_path / "prefs.ties.jsonl"
    ties.write_text('{"earlier": "ties"}\n')
    with BackgroundServer(app) as server:  # with keep_ties the ties it found are written, the pairs file still kept
        with pytest.raises(ConfigError, match=r"left out: 2 no clear best \(written to .*prefs.ties.\d{8}-\d{6}.jsonl\)"):
            judge_command(candidates=str(cands), out=str(out), judge=server.url, keep_ties=True)
    assert out.read_text() == before and ties.read_text() == '{"earlier": "ties"}\n'  # the earlier run's, kept
    [new] = [p for p in tmp_path.glob("prefs.ties.*.jsonl") if p != ties]
    assert len(new.read_text().splitlines()) == 2


# ------------------------------------------------------------------------------- the judge cache on reruns

def test_a_cached_judge_rerun_still_reports_the_endpoint_adaptations(tmp_path):
    from test_eval_winrate import REFUSED, reasoning_model_app
    from test_judge import SETS, prefers_longer, write_candidates

    from prefloop.judge.run import judge_command

    cands = write_candidates(tmp_path / "cands.jsonl", SETS)
    app, requests, _ = reasoning_model_app(prefers_longer)
    cache = str(tmp_path / "judge-cache.jsonl")
    with BackgroundServer(app) as server:
        assert judge_command(candidates=str(cands), out=str(tmp_path / "a.jsonl"), judge=server.url, cache=cache) == 0
        paid = len(requests)
        assert judge_command(candidates=str(cands), out=str(tmp_path / "b.jsonl"), judge=server.url, cache=cache) == 0
    assert len(requests) == paid  # the rerun came from the cache
    first = json.loads((tmp_path / "a.report.json").read_text())
    again = json.loads((tmp_path / "b.report.json").read_text())
    assert first["endpoint_adaptations"] == REFUSED
    assert again["from_cache"] == again["judgments"] and again["endpoint_adaptations"] == REFUSED


# -------------------------------------------------------------------------- folders: merge and convert

def _adapter(tiny_model_dir, tiny_tokenizer, path):
    from prefloop.config import load_config
    from prefloop.models import apply_finetuning, load_causal_lm

    cfg = load_config({"model_name_or_path": str(tiny_model_dir), "output_dir": str(path.parent / "run"),
                       "dataset": "x.jsonl", "lora_rank": 4})
    policy = apply_finetuning(load_causal_lm(str(tiny_model_dir)), cfg)
    policy.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_merge_refuses_a_folder_of_user_files_and_replaces_only_its_own_output(tiny_model_dir, tiny_tokenizer,
                                                                                tmp_path, capsys):
    from prefloop.models import MERGE_MARKER

    adapter = _adapter(tiny_model_dir, tiny_tokenizer, tmp_path / "adapter")
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.tex").write_text("months of work")
    assert main(["merge", str(adapter), "--out", str(work)]) == 2
    assert "other files in it (thesis.tex)" in capsys.readouterr().err
    assert [p.name for p in work.iterdir()] == ["thesis.tex"] and (work / "thesis.tex").read_text() == "months of work"

    out = tmp_path / "merged"
    assert main(["merge", str(adapter), "--out", str(out)]) == 0
    marker = json.loads((out / MERGE_MARKER).read_text())
    assert marker["adapter"] == str(adapter.resolve())
    (out / "stale.bin").write_text("from an older merge")  # a file an older merge wrote (its marker lists it)
    (out / MERGE_MARKER).write_text(json.dumps({**marker, "files": [*marker["files"], "stale.bin"]}))
    assert main(["merge", str(adapter), "--out", str(out)]) == 0  # an earlier merge output: replaced whole
    assert not (out / "stale.bin").exists() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "merged", "work"]  # nothing left beside it


def test_convert_refuses_a_folder_of_user_files(tmp_path):
    from test_convert import write_tiny_llama_gguf

    from prefloop.convert import MARKER, convert_gguf, main as convert_main

    gguf = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    assert convert_main(["gguf", str(gguf), "--out", str(work)]) == 2
    assert [p.name for p in work.iterdir()] == ["notes.txt"]
    out = tmp_path / "model"
    convert_gguf(gguf, out)
    (out / "stale.bin").write_text("from an older conversion")  # a file an older conversion wrote (listed)
    marker = json.loads((out / MARKER).read_text())
    (out / MARKER).write_text(json.dumps({**marker, "files": [*marker["files"], "stale.bin"]}))
    convert_gguf(gguf, out)  # a previous conversion (marker): replaced whole
    assert (out / MARKER).is_file() and not (out / "stale.bin").exists()
    assert sorted(os.listdir(tmp_path)) == ["model", "tiny.gguf", "work"]


# ------------------------------------------------------------------------ gate rules: numbers in quotes

def test_gate_rules_accept_numbers_and_booleans_written_in_quotes(tmp_path):
    from prefloop.registry.gate import evaluate_gate
    from prefloop.registry.rules import load_rules

    path = tmp_path / "rules.yaml"
    path.write_text('rules:\n'
                    '  - metric: win_rate\n    at_least: "0.5"\n    sanity: "true"\n'
                    '  - metric: pref_accuracy\n    vs_baseline: higher_is_better\n    tolerance: "1e-2"\n')
    first, second = load_rules(path)
    assert (first.threshold, first.sanity, second.tolerance) == (0.5, True, 0.01)
    base = {"pref_accuracy": 0.7}
    assert evaluate_gate([first, second], {"win_rate": 0.6, "pref_accuracy": 0.695}, base).verdict == "pass"
    assert evaluate_gate([first, second], {"win_rate": 0.45, "pref_accuracy": 0.7}, base).verdict != "pass"
    path.write_text('rules:\n  - metric: win_rate\n    at_least: "half"\n')
    with pytest.raises(ConfigError, match=r"rules.yaml:2: at_least: 'half' is not a number"):
        load_rules(path)


# ------------------------------------------------------------------------------ eval compare: details too

def test_eval_compare_reports_per_item_details_that_differ_under_equal_metrics(tmp_path, capsys):
    from prefloop.evaluate.compare import compare_results
    from prefloop.evaluate.results import model_entry, new_results, write_results

    metrics = {"win_rate": 0.5, "wins": 1, "losses": 1}
    rows = [{"id": "p1", "outcome": "win"}, {"id": "p2", "outcome": "loss"}]
    a = new_results("winrate", models={"after": model_entry(path="m")}, metrics=metrics,
                    details={"per_prompt": rows, "lc": {"weights": {"constant": 0.2}}})
    b = new_results("winrate", models={"after": model_entry(path="m")}, metrics=metrics,
                    details={"per_prompt": [{"id": "p2", "outcome": "win"}, {"id": "p1", "outcome": "loss"}],
                             "lc": {"weights": {"constant": 0.5}}})
    diff = compare_results(a, b)
    assert all(m["diff"] == 0 for m in diff["metrics"]) and diff["settings"] == []
    by_name = {d["name"]: d for d in diff["details"]}
    p1 = by_name["details.per_prompt[p1].outcome"]
    assert (p1["a"], p1["b"]) == ("win", "loss")
    assert by_name["details.per_prompt[p2].outcome"]["b"] == "win"
    assert by_name["details.lc.weights.constant"]["diff"] == pytest.approx(0.3)
    assert len(diff["details"]) == 3 and diff["details_same"] == 2  # the two ids line up, whatever the order
    write_results(tmp_path / "a", a)
    write_results(tmp_path / "b", b)
    assert main(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "details that differ: 3 (" in out and "details.per_prompt[p1].outcome: A='win'  B='loss'" in out
    assert compare_results(a, a)["details"] == []


# ------------------------------------------------------------------ generate: no mixing of two runs' answers

def test_generate_refuses_to_append_another_model_s_or_settings_answers(tiny_model_dir, tmp_path):
    from prefloop.generate import generate_command
    from prefloop.testing import save_tiny_model

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Name a city."}) + "\n")
    out = tmp_path / "cands.jsonl"
    assert generate_command(model=str(tiny_model_dir), prompts=str(prompts), out=str(out), n=2,
                            max_new_tokens=3) == 0
    before = out.read_text()
    prompts.write_text(json.dumps({"prompt": "Name a city."}) + "\n" + json.dumps({"prompt": "Name a river."}) + "\n")
    with pytest.raises(ConfigError, match=r"cands.jsonl:1: holds answers of another run \(temperature 0.8, not 0.2\)"):
        generate_command(model=str(tiny_model_dir), prompts=str(prompts), out=str(out), n=2, max_new_tokens=3,
                         temperature=0.2)
    other = save_tiny_model(tmp_path / "other-model", seed=1)
    with pytest.raises(ConfigError, match=r"holds answers of another run \(model .*, not .*other-model"):
        generate_command(model=str(other), prompts=str(prompts), out=str(out), n=2, max_new_tokens=3)
    assert out.read_text() == before
    assert generate_command(model=str(tiny_model_dir), prompts=str(prompts), out=str(out), n=2,
                            max_new_tokens=3) == 0  # the same run resumes
    assert len(out.read_text().splitlines()) == 2
    # a finished file: a rerun with other settings was "nothing to do", exit 0, the file passing for n=3's
    with pytest.raises(ConfigError, match=r"holds answers of another run \(n 2, not 3\)"):
        generate_command(model=str(tiny_model_dir), prompts=str(prompts), out=str(out), n=3, max_new_tokens=3)


def test_forget_rewrites_the_file_a_symlinked_loop_file_points_to(tmp_path):
    """A loop file that is a symlink (e.g. into a shared data folder): the old rename replaced the link with a
    cleaned copy and left the forgotten text in the file it pointed to."""
    from prefloop.loop.forget import purge_files

    shared = tmp_path / "shared" / "pairs.jsonl"
    shared.parent.mkdir()
    shared.write_text(json.dumps({"prompt": "my secret address"}) + "\n" + json.dumps({"prompt": "fine"}) + "\n")
    loop_dir = tmp_path / "loop"
    loop_dir.mkdir()
    (loop_dir / "pairs.jsonl").symlink_to(shared)
    assert purge_files(loop_dir, {"my secret address"}) == {str(loop_dir / "pairs.jsonl"): 1}
    assert (loop_dir / "pairs.jsonl").is_symlink()
    assert "secret" not in shared.read_text() and json.loads(shared.read_text()) == {"prompt": "fine"}


def test_round_results_and_the_reference_cache_rewrite_the_file_a_symlink_points_to(tmp_path):
    """rounds' JSON results and the reference cache's safetensors files go through write_atomically: a symlinked
    file stays a symlink (its target is replaced) and no temporary is left (was: own tmp+rename, replacing
    the link by a file)."""
    import torch

    from prefloop.train.reference import ReferenceCache
    from prefloop.train.rounds import _write_json

    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "rounds_report.json").write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    link = out / "rounds_report.json"
    link.symlink_to(kept / "rounds_report.json")
    _write_json(link, {"rounds": [1]})
    assert link.is_symlink() and json.loads((kept / "rounds_report.json").read_text()) == {"rounds": [1]}

    cache = ReferenceCache(tmp_path / "cache")
    (tmp_path / "cache").mkdir()
    path = cache.path("train", "k" * 24)
    (kept / "cache.safetensors").write_bytes(b"old")
    path.symlink_to(kept / "cache.safetensors")
    cache.save("train", "k" * 24, torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -4.0]), {"model": "m"})
    assert path.is_symlink()
    assert cache.load("train", "k" * 24, 2)[1].tolist() == [-3.0, -4.0]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [path.name]
    assert sorted(p.name for p in out.iterdir()) == ["rounds_report.json"]
