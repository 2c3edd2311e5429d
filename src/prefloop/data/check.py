"""`prefloop data check`: validate a preference dataset, print a quality report, write a clean copy.

Exit codes: 0 the data can be trained on (warnings may be printed), 1 no usable pair is left
(every pair fails a check or would be dropped at `--cutoff-len`), 2 the data cannot be read
(DataError, printed by the CLI with file, line and field).
"""

from __future__ import annotations

import json as jsonlib
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from prefloop.data.formats import warning_lines, write_seed_jsonl
from prefloop.data.loader import LoadResult, load_pairs
from prefloop.data.quality import QualityReport, run_quality_checks
from prefloop.data.registry import CHECK_OPTIONS
from prefloop.data.schema import REASONING_FIELDS, PreferencePair
from prefloop.data.words import count, plural
from prefloop.errors import ConfigError


def distribution(values: Sequence[int]) -> dict[str, float]:
    """min / median / p95 (nearest rank) / max / mean of a list of lengths."""
    if not values:
        return {}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, max(0, -(-95 * len(ordered) // 100) - 1))]
    return {"min": ordered[0], "median": statistics.median(ordered), "p95": p95, "max": ordered[-1],
            "mean": round(statistics.fmean(ordered), 2)}


def turn_stats(pairs: Sequence[PreferencePair]) -> dict[str, Any]:
    """Prompt turns per pair (system excluded), multi-turn share, system prompts, tools, and pairs whose
    prompt, or whose answers, have tool calls, tool results, speaker names or reasoning (the fields a
    template must render)."""
    user_turns = [sum(1 for m in p.prompt if m.role == "user") for p in pairs]
    answers = [(p.answer("chosen"), p.answer("rejected")) for p in pairs]
    return {
        "prompt_turns": distribution([len(p.turns) for p in pairs]),
        "multi_turn_pairs": sum(1 for n in user_turns if n > 1),
        "with_system_prompt": sum(1 for p in pairs if p.system is not None),
        "with_tools": sum(1 for p in pairs if p.tools),
        "with_tool_calls": sum(1 for p in pairs if any(m.fields.get("tool_calls") for m in p.prompt)),
        "with_tool_results": sum(1 for p in pairs if any(m.role in ("tool", "function_call") for m in p.prompt)),
        "with_names": sum(1 for p in pairs if any(m.fields.get("name") and m.role != "tool" for m in p.prompt)),
        "with_reasoning": sum(1 for p in pairs if any(k in m.fields for m in p.prompt for k in REASONING_FIELDS)),
        "answers_with_tool_calls": sum(1 for a in answers if any(m.fields.get("tool_calls") for m in a)),
        "function_call_answers": sum(1 for a in answers if any(m.role == "function_call" for m in a)),
        "answers_with_names": sum(1 for a in answers if any(m.fields.get("name") for m in a)),
        "answers_with_reasoning": sum(1 for a in answers if any(k in m.fields for m in a for k in REASONING_FIELDS)),
        "with_weight": sum(1 for p in pairs if p.weight is not None),
        "with_margin": sum(1 for p in pairs if p.margin is not None),
        "with_dimensions": sum(1 for p in pairs if p.dimensions),
    }


def tokenizer_and_template(tokenizer_path: str, template_name: str | None):
    from prefloop.data.template import get_template
    from prefloop.models import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path, key="--tokenizer")
    return tokenizer, get_template(template_name, tokenizer)


def token_report(pairs: Sequence[PreferencePair], tokenizer_path: str, template_name: str | None,
                 cutoff_len: int | None, loaded=None) -> dict[str, Any]:
    """Token lengths of prompt/chosen/rejected (untruncated) and what `cutoff_len` would cut or drop.

    The dataset is encoded once, untruncated; the truncation report comes from those lengths: a
    pair whose prompt + longer response fits `cutoff_len` is kept as it is, and only the pairs over
    it are encoded again with the cutoff (what training would do to them). The result equals
    encoding everything with the cutoff, at the cost of the long pairs only.
    """
    from prefloop.data.encode import encode_pairs

    tokenizer, template = loaded or tokenizer_and_template(tokenizer_path, template_name)
    encoded, full = encode_pairs(pairs, tokenizer, template, cutoff_len=None)
    lengths = [len(e.prompt_ids) + max(len(e.chosen_ids), len(e.rejected_ids)) for e in encoded]
    report: dict[str, Any] = {
        "tokenizer": tokenizer_path,
        "template": template.name,
        "encoded": full.kept,
        "not_encodable": [{"id": d.id, "reason": d.reason} for d in full.dropped],
        "prompt": distribution([len(e.prompt_ids) for e in encoded]),
        "chosen": distribution([len(e.chosen_ids) for e in encoded]),
        "rejected": distribution([len(e.rejected_ids) for e in encoded]),
        "pair_length": distribution(lengths),
    }
    if full.tools_ignored:
        report["tools_ignored"] = full.tools_ignored
    for key in ("end_of_turn_in_text", "empty_responses", "boundary_moved", "control_tokens_in_text"):
        if getattr(full, key):
            report[key] = getattr(full, key)
    if full.control_tokens_in_text:
        report["control_tokens_seen"] = full.control_tokens_seen
    report["fields_not_rendered"] = full.fields_not_rendered
    kept_indices = {e.index for e in encoded}
    if cutoff_len is not None:
        over_indices = [e.index for e, n in zip(encoded, lengths) if n > cutoff_len]
        kept, cut = encode_pairs([pairs[i] for i in over_indices], tokenizer, template, cutoff_len=cutoff_len)
        dropped = full.dropped + cut.dropped
        kept_indices = (kept_indices - set(over_indices)) | {over_indices[e.index] for e in kept}
        report["cutoff"] = {
            "cutoff_len": cutoff_len,
            "kept": len(kept_indices),
            "dropped": len(dropped),
            "drop_reasons": dict(Counter(d.reason.split(":")[0] for d in dropped)),
            "dropped_ids": [d.id for d in dropped[:20]],
            "over_cutoff": len(over_indices),
            "prompt_truncated": cut.prompt_truncated,
            "turns_dropped": cut.turns_dropped,
            "response_truncated": cut.response_truncated,
        }
    report["_kept_indices"] = kept_indices
    return report


def build_report(loaded: LoadResult, quality: QualityReport, tokens: dict[str, Any] | None) -> dict[str, Any]:
    pairs = loaded.pairs
    report: dict[str, Any] = {
        "datasets": [{"name": s.name, "files": [str(f) for f in s.files], "formatting": s.spec.formatting,
                      "pairs": loaded.pairs_per_dataset.get(s.name, 0)} for s in loaded.sources],
        "pairs": len(pairs),
        "formats": dict(loaded.format_counts.most_common()),
        "skipped": loaded.skipped.to_dict(),
        "warnings": loaded.warnings.to_dict(),
        "notes": list(loaded.notes),
        "turns": turn_stats(pairs),
        "quality": quality.to_dict(),
    }
    passing = {i for i in range(len(pairs)) if i not in quality.removed}
    if tokens is not None:
        passing &= tokens.pop("_kept_indices")
        report["tokens"] = tokens
    report["usable_pairs"] = len(passing)
    return report


# ---------------------------------------------------------------------------------------------
# Text rendering
# ---------------------------------------------------------------------------------------------


def _dist_text(d: dict[str, Any]) -> str:
    if not d:
        return "-"
    return f"min {d['min']} / median {d['median']:g} / p95 {d['p95']} / max {d['max']}"


def render_text(report: dict[str, Any], dataset: str) -> str:
    lines = [f"Dataset {dataset}"]
    for ds in report["datasets"]:
        if ds["files"] == [ds["name"]]:
            lines.append(f"  {count(ds['pairs'], 'pair')} (formatting: {ds['formatting']})")
            continue
        files = ", ".join(ds["files"][:5]) + (f" (+{len(ds['files']) - 5} more)" if len(ds["files"]) > 5 else "")
        lines.append(f"  {ds['name']}: {count(ds['pairs'], 'pair')} from {files} (formatting: {ds['formatting']})")
    formats = ", ".join(f"{k} {v}" for k, v in report["formats"].items()) or "none"
    lines.append(f"  pairs: {report['pairs']}   formats detected: {formats}")
    skipped = report["skipped"]
    if skipped["count"]:
        lines.append(f"  skipped: {count(skipped['count'], 'bad row')}")
        for reason, n in list(skipped["reasons"].items())[:10]:
            lines.append(f"    {n:>6}  {reason}")
        for p in skipped["first"][:5]:
            where = f"{p['file']} {p['location']}".strip()
            lines.append(f"    e.g. {where}: {p['field'] + ': ' if p['field'] else ''}{p['message']}")
    warned = report.get("warnings") or {}
    if warned.get("count"):
        lines.append(f"  pairs read with a warning: {warned['count']}")
        for line in warning_lines(warned["kinds"]):
            lines.append(f"    {line}")
        for p in warned["first"][:3]:
            where = f"{p['file']} {p['location']}".strip()
            lines.append(f"    e.g. {where}: {p['field'] + ': ' if p['field'] else ''}{p['message']}")
    for note in report.get("notes") or []:  # what was done as asked: a num_samples draw
        lines.append(f"  {note}")
    t = report["turns"]
    lines.append(f"  prompt turns per pair: {_dist_text(t['prompt_turns'])}; {t['multi_turn_pairs']} multi-turn, "
                 f"{t['with_system_prompt']} with a system prompt, {t['with_tools']} with tools")
    fields = [f"{t[k]} with {k[5:].replace('_', ' ')}" for k in ("with_tool_calls", "with_tool_results", "with_names",
                                                                   "with_reasoning") if t[k]]
    if fields:
        lines.append("  prompts with template fields: " + ", ".join(fields))
    answer_fields = [f"{t[k]} {text}" for k, text in (
        ("answers_with_tool_calls", "with tool calls"), ("function_call_answers", "function calls"),
        ("answers_with_names", "with names"), ("answers_with_reasoning", "with reasoning")) if t.get(k)]
    if answer_fields:
        lines.append("  pairs whose answers have template fields: " + ", ".join(answer_fields))
    extras = [f"{t[k]} with {k[5:]}" for k in ("with_weight", "with_margin", "with_dimensions") if t[k]]
    if extras:
        lines.append("  optional fields: " + ", ".join(extras))

    tokens = report.get("tokens")
    if tokens:
        lines.append("")
        lines.append(f"Tokens (tokenizer {tokens['tokenizer']}, template {tokens['template']})")
        lines.append(f"  {'':10}{'min':>8}{'median':>9}{'p95':>8}{'max':>8}")
        for part in ("prompt", "chosen", "rejected", "pair_length"):
            d = tokens[part]
            if d:
                lines.append(f"  {part:10}{d['min']:>8}{d['median']:>9g}{d['p95']:>8}{d['max']:>8}")
        if tokens["not_encodable"]:
            lines.append(f"  {count(len(tokens['not_encodable']), 'pair')} cannot be encoded, e.g. "
                         + "; ".join(f"{d['id']}: {d['reason']}" for d in tokens["not_encodable"][:3]))
        if tokens.get("fields_not_rendered"):
            lines.append(f"  {count(tokens['fields_not_rendered'], 'pair')} refused: their prompts or answers have tool calls, tool "
                         f"results, names or reasoning that the {tokens['template']} template does not render")
        if tokens.get("tools_ignored"):
            lines.append(f"  {count(tokens['tools_ignored'], 'pair')} {plural('has', tokens['tools_ignored'])} tools that this template does not render")
        if tokens.get("end_of_turn_in_text"):
            lines.append(f"  {count(tokens['end_of_turn_in_text'], 'pair')} {'ends' if tokens['end_of_turn_in_text'] == 1 else 'end'} replies with the end-of-turn/EOS token written "
                         "as text; training removes it (the template writes one)")
        if tokens.get("control_tokens_in_text"):
            shown = ", ".join(repr(t) for t in tokens["control_tokens_seen"][:3])
            lines.append(f"  {count(tokens['control_tokens_in_text'], 'pair')} {plural('has', tokens['control_tokens_in_text'])} chat-template control tokens ({shown}) in "
                         "their text: already rendered with a template? give plain text (prefloop renders it)")
        if tokens.get("boundary_moved"):
            lines.append(f"  {count(tokens['boundary_moved'], 'pair')}: the tokenizer merges the end of the prompt with the "
                         "start of the answer; the merged token is trained as part of the answer")
        cut = tokens.get("cutoff")
        if cut:
            lines.append(f"  cutoff_len {cut['cutoff_len']}: {count(cut['over_cutoff'], 'pair')} {plural('is', cut['over_cutoff'])} longer; "
                         f"{count(cut['prompt_truncated'], 'prompt')} truncated "
                         f"({count(cut['turns_dropped'], 'oldest turn')} dropped), {count(cut['response_truncated'], 'pair')} with "
                         f"responses cut, {count(cut['dropped'], 'pair')} dropped, {cut['kept']} kept")
            for reason, n in cut["drop_reasons"].items():
                lines.append(f"    {n:>6} dropped: {reason}")
            if cut["dropped_ids"]:
                lines.append("           dropped ids: " + ", ".join(cut["dropped_ids"][:10]) + (" ..." if cut["dropped"] > 10 else ""))

    lines += _dimension_lines(report.get("dimensions"))
    quality = report["quality"]
    lines.append("")
    lines.append("Quality")
    for f in quality["findings"]:
        tag = {"ok": "ok", "error": "ERROR", "warning": "WARN", "info": "note"}[f["severity"]]
        removal = "  (removed by --write-clean)" if f["removes"] and f["count"] else ""
        lines.append(f"  [{tag:5}] {f['title']}: {f['count']}{removal}")
        if f["check"] == "length_bias":
            lines.append(f"          {f['advice']}" if f["count"] else f"          {f['advice'].split('. ')[0]}")
            continue
        if f["count"]:
            lines.append(f"          {f['advice']}")
        if f["count"] or f["check"] == "off_topic":
            label = "least related" if f["check"] == "off_topic" else "e.g."
            for ex in f["examples"]:
                detail = f": {ex['detail']}" if ex.get("detail") else ""
                lines.append(f"          {label} {ex['id']} ({ex['source']}){detail}")
    lines.append("")
    lines.append(f"Result: {quality['passing']} of {count(quality['total'], 'pair')} pass the quality checks; "
                 f"{report['usable_pairs']} usable for training"
                 + (f" at cutoff_len {tokens['cutoff']['cutoff_len']}" if tokens and tokens.get("cutoff") else "") + ".")
    clean = report.get("write_clean")
    if clean:
        removed = ", ".join(f"{n} {check}" for check, n in clean["removed_by_check"].items()) or "nothing"
        lines.append(f"Wrote {count(clean['written'], 'pair')} to {clean['path']} (removed: {removed}).")
    if report["usable_pairs"] == 0:
        lines.append("No usable pairs: this data cannot be trained on. Fix the problems above.")
    return "\n".join(lines)


def _dimension_lines(dims: dict | None) -> list[str]:
    """Per-dimension agreement with the combined preference, and warnings for contradicting dimensions."""
    if not dims:
        return []
    single = dims.get("single_scores") or {}
    note = (["  one score per pair (no direction, not compared): "
             + ", ".join(f"{name} in {count(n, 'pair')}" for name, n in single.items())] if single else [])
    if "per_dimension" not in dims:
        return ["", "Dimensions"] + note
    lines = ["", f"Dimensions ({count(dims['pairs_with_dimensions'], 'pair')} with scores; agreement with {dims['combined']})"]
    lines.append(f"  {'':16}{'scored':>8}{'agree':>8}{'disagree':>10}{'ties':>7}{'agreement':>11}")
    for name, d in dims["per_dimension"].items():
        share = "-" if d["agreement"] is None else f"{d['agreement']:.3f}"
        lines.append(f"  {name[:16]:16}{d['scored']:>8}{d['agree']:>8}{d['disagree']:>10}{d['ties']:>7}{share:>11}")
    for c in dims["contradictions"]:
        lines.append(f"  {c['dimensions'][0]} vs {c['dimensions'][1]}: contradict in {c['contradict']:.3f} of "
                     f"{count(c['pairs'], 'pair')} both decide")
    lines += [f"  [WARN ] {w}" for w in dims["warnings"]]
    return lines + note


def check_command(dataset: str, dataset_dir: str = "data", tokenizer: str | None = None, template: str | None = None,
                  cutoff_len: int | None = None, write_clean: str | None = None, json: bool = False,
                  skip_bad_rows: bool = False, dimension_weights: str | None = None, seed: int = 42) -> int:
    """`prefloop data check`; returns 0 (trainable), 1 (no usable pairs). Unreadable data raises DataError.

    `dimension_weights` ("helpfulness=1,safety=2"): the per-dimension report compares each dimension
    with the weighted scores' direction instead of the data's label. `seed`: the training seed, for a
    dataset_info num_samples draw (the same pairs training reads with that seed)."""
    from prefloop.data.dimensions import agreement_report, check_weight_names
    from prefloop.data.ratings import parse_weights

    if tokenizer is None and (cutoff_len is not None or template is not None):
        raise ConfigError("--cutoff-len and --template need --tokenizer (a model directory) to count tokens")
    if cutoff_len is not None and cutoff_len < 1:
        raise ConfigError(f"--cutoff-len must be a positive number of tokens, got {cutoff_len}")
    loaded = load_pairs(dataset, dataset_dir=dataset_dir, skip_bad_rows=skip_bad_rows, allow_empty=True,
                        options=CHECK_OPTIONS, seed=seed)
    # The identical/empty checks strip only this tokenizer's stop strings, as the encoder does (none without one).
    model = tokenizer_and_template(tokenizer, template) if tokenizer and loaded.pairs else None
    quality = run_quality_checks(loaded.pairs, stops=model[1].stop_strings(model[0]) if model else ())
    tokens = token_report(loaded.pairs, tokenizer, template, cutoff_len, loaded=model) if model else None
    report = build_report(loaded, quality, tokens)
    weights = parse_weights(dimension_weights, "--dimension-weights")
    check_weight_names(loaded.pairs, weights, "--dimension-weights")
    dims = agreement_report(loaded.pairs, weights)
    if dims:
        report["dimensions"] = dims
    if write_clean:
        from prefloop.output_files import refuse_empty_replace, write_atomically

        if Path(write_clean).resolve() in {Path(f).resolve() for f in loaded.files}:
            raise ConfigError(f"--write-clean {write_clean} is an input file of {dataset}: the pairs the checks "
                              f"remove and the bad rows skipped ({loaded.skipped.count}) would be lost from it; "
                              "write the clean copy to another file (and replace the input yourself once it is right)")
        clean = list(quality.clean(loaded.pairs))
        removed = ", ".join(f"{n} {c}" for c, n in sorted(quality.removed_by_check().items()))
        refuse_empty_replace(write_clean, len(clean), "--write-clean",
                             f"{len(loaded.pairs)} pairs read from {dataset}, removed: {removed or 'none'}")
        write_atomically(write_clean, lambda tmp: write_seed_jsonl(clean, tmp))
        written = len(clean)
        report["write_clean"] = {"path": str(write_clean), "written": written, "removed": len(quality.removed),
                                 "removed_by_check": quality.removed_by_check()}
    if json:
        print(jsonlib.dumps(report, indent=2, ensure_ascii=False, default=str))
    else:
        print(render_text(report, dataset))
    if report["usable_pairs"] == 0:
        print("prefloop data check: no usable pairs", file=sys.stderr)
        return 1
    return 0
