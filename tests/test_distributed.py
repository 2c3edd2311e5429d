"""Data-parallel training: 2 processes (torchrun, gloo on CPU) train exactly like 1 process with the
same global batch; only rank 0 writes; the reference cache built by 2 ranks equals the one built by 1.

Every file a process creates under output_dir is recorded by an audit hook (open for writing,
mkdir, rename), loaded into each process through a sitecustomize module on PYTHONPATH, so "only
rank 0 wrote" is observed, not inferred.
"""

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from prefloop.config import load_config
from prefloop.errors import ConfigError
from prefloop.train import distributed

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
STEPS = 3

AUDIT_HOOK = '''
import os, sys
_out = os.environ.get("PREFLOOP_AUDIT_OUT")
_log = os.environ.get("PREFLOOP_AUDIT_LOG")
if _out and _log:
    _out = os.path.realpath(_out)
    _writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def _record(path):
        try:
            path = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return
        if path.startswith(_out + os.sep):
            with open(_log + "." + os.environ.get("RANK", "single"), "a") as f:
                f.write(path + "\\n")

    def _hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2] or 0
            if (mode and any(c in mode for c in "wax+")) or (not mode and flags & _writes):
                _record(args[0])
        elif event in ("os.mkdir", "os.rename") and isinstance(args[0], (str, bytes, os.PathLike)):
            _record(args[1] if event == "os.rename" else args[0])

    sys.addaudithook(_hook)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_pairs(path: Path, n: int) -> Path:
    """Pairs of varied lengths, some multi-turn: a polite detailed chosen, a curt rejected."""
    topics = ["the moon", "tea", "python code", "water", "a dog", "the sun", "two plus two", "maps"]
    with path.open("w") as f:
        for i in range(n):
            topic = topics[i % len(topics)]
            turns = [{"from": "human", "value": f"What is {topic}?" + " Please explain." * (i % 3)}]
            if i % 4 == 0:
                turns = [{"from": "human", "value": "hello"}, {"from": "gpt", "value": "Hi, how can I help?"}] + turns
            f.write(json.dumps({"conversations": turns,
                                "chosen": f"Certainly. Here is a good answer about {topic}" + ", step by step" * (i % 4),
                                "rejected": "no" + " idea" * (i % 2)}) + "\n")
    return path


def write_config(tmp: Path, name: str, model_dir: Path, data: Path, per_device: int, **extra) -> Path:
    cfg = dict(model_name_or_path=str(model_dir), dataset=str(data), template="qwen", cutoff_len=128,
               finetuning_type="lora", lora_rank=4, lora_target="all", learning_rate=5e-3, max_steps=STEPS,
               lr_scheduler_type="cosine", warmup_ratio=0.2, per_device_train_batch_size=per_device,
               gradient_accumulation_steps=2, per_device_eval_batch_size=4, val_size=4, logging_steps=1,
               save_steps=2, report_to="tensorboard", output_dir=str(tmp / name), sample_prompts=1, seed=7,
               plot_loss=True, packing=True, prefix_sharing=True, **extra)  # packed per rank
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch(cmd: list[str], tmp: Path, out: Path, env_extra: dict | None = None) -> None:
    audit = tmp / "audit"
    audit.mkdir(exist_ok=True)
    (audit / "sitecustomize.py").write_text(AUDIT_HOOK)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(audit), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "PREFLOOP_AUDIT_OUT": str(out), "PREFLOOP_AUDIT_LOG": str(tmp / f"writes-{out.name}"),
           **(env_extra or {})}
    done = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def writes(tmp: Path, out: Path) -> dict[str, set[str]]:
    """{RANK or 'single': relative paths that process created under `out`}."""
    found = {}
    for log in tmp.glob(f"writes-{out.name}.*"):
        who = log.name.rsplit(".", 1)[1]
        found[who] = {str(Path(p).relative_to(out.resolve())) for p in log.read_text().split()}
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """The same run twice: 1 process x 2 pairs per device, and torchrun 2 processes x 1 pair per device
    (global batch 2 x accumulation 2 = 4 pairs per step either way), each process packing its own
    batches with prefix sharing."""
    tmp = tmp_path_factory.mktemp("ddp")
    data = write_pairs(tmp / "pairs.jsonl", 24)
    single = write_config(tmp, "single", tiny_model_dir, data, per_device=2)
    multi = write_config(tmp, "multi", tiny_model_dir, data, per_device=1)
    launch([sys.executable, "-m", "prefloop", "train", str(single)], tmp, tmp / "single")
    launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), "-m", "prefloop", "train", str(multi)], tmp, tmp / "multi")
    return {"tmp": tmp, "single": tmp / "single", "multi": tmp / "multi"}


def history(out: Path) -> list[dict]:
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


def test_two_processes_train_like_one_with_the_same_global_batch(runs):
    one, two = history(runs["single"]), history(runs["multi"])
    losses_one = [h["loss"] for h in one if "loss" in h]
    losses_two = [h["loss"] for h in two if "loss" in h]
    assert len(losses_one) == STEPS and losses_two == pytest.approx(losses_one, abs=1e-4)
    assert losses_one[-1] < losses_one[0]  # it learned, so matching weights are not the untouched init
    for key in ("rewards/margins", "rewards/accuracies", "logps/chosen", "grad_norm"):
        assert [h[key] for h in two if key in h] == pytest.approx([h[key] for h in one if key in h], abs=1e-4), key
    eval_one, eval_two = (json.loads((runs[r] / "eval_results.json").read_text()) for r in ("single", "multi"))
    for key in ("eval_loss", "eval_rewards/margins", "eval_rewards/accuracies", "eval_logps/chosen"):
        assert eval_two[key] == pytest.approx(eval_one[key], abs=1e-4), key  # averaged over ranks, none twice

    a = load_file(str(runs["single"] / "adapter_model.safetensors"))
    b = load_file(str(runs["multi"] / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and a
    moved = load_file(str(runs["single"] / "checkpoint-2" / "adapter_model.safetensors"))
    assert max((a[k] - moved[k]).abs().max().item() for k in a) > 1e-4  # step 3 changed the weights
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_only_rank_zero_writes_logs_checkpoints_and_outputs(runs):
    by_rank = writes(runs["tmp"], runs["multi"])
    assert set(by_rank) <= {"0", "1"} and by_rank.get("0")
    # Rank 1 writes nothing but its own RNG state into each checkpoint (the Trainer's design: resume
    # restores every rank's RNG), so the only thing it may create is the checkpoint directory itself.
    assert by_rank.get("1", set()) <= {"checkpoint-2", "checkpoint-3"}, f"rank 1 wrote {sorted(by_rank['1'])[:10]}"
    assert (runs["multi"] / "checkpoint-2" / "rng_state_1.pth").is_file()
    written = by_rank["0"]
    for expected in ("trainer_state.json", "prefloop_config.yaml", "samples.jsonl", "train_results.json",
                     "checkpoint-2", "checkpoint-3"):
        assert expected in written, expected
    assert any(p.startswith("runs/") for p in written)  # TensorBoard
    assert any(p.endswith(".png") for p in written)  # plots
    assert any(p.startswith("ref_cache/") for p in written)  # the reference cache, written once
    events = list((runs["multi"] / "runs").rglob("events.out.tfevents.*"))
    assert events and len({e.name.split(".")[-2] for e in events}) == 1  # one writing process (its pid)
    # Both ranks' RNG states are in the checkpoint (resume needs the same world size).
    assert distributed.checkpoint_world_size(runs["multi"] / "checkpoint-2") == 2
    assert distributed.checkpoint_world_size(runs["single"] / "checkpoint-2") == 1


def test_reference_cache_built_by_two_ranks_equals_the_one_built_by_one(runs):
    one = sorted((runs["single"] / "ref_cache").glob("*.safetensors"))
    two = sorted((runs["multi"] / "ref_cache").glob("*.safetensors"))
    assert [p.name for p in one] == [p.name for p in two] and len(one) == 2  # train and validation, same keys
    for p1, p2 in zip(one, two):
        t1, t2 = load_file(str(p1)), load_file(str(p2))
        assert t1["chosen"].shape == t2["chosen"].shape and t1["chosen"].numel() in (20, 4)
        for key in ("chosen", "rejected"):
            torch.testing.assert_close(t2[key], t1[key], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The pieces, without launching processes


def test_shards_cover_the_data_once_on_batch_boundaries():
    for count, batch, world in [(20, 4, 2), (4, 4, 2), (10, 3, 3), (7, 2, 4), (0, 4, 2)]:
        bounds = [distributed.shard_bounds(count, batch, r, world) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == count
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert all(start % batch == 0 for start, _ in bounds)


def test_resume_needs_the_same_world_size(tmp_path, monkeypatch):
    ckpt = tmp_path / "checkpoint-4"
    ckpt.mkdir()
    for r in range(2):
        (ckpt / f"rng_state_{r}.pth").write_bytes(b"x")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.check_resume_world_size(str(ckpt)) == str(ckpt)
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ConfigError, match="written by 2 process"):
        distributed.check_resume_world_size(str(ckpt))
    assert distributed.check_resume_world_size(None) is None


def test_world_size_from_a_scheduler_sets_local_rank_or_says_what_is_missing(monkeypatch):
    for name in ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "0")  # so that monkeypatch restores each one (absent) afterwards,
        monkeypatch.delenv(name)  # including the LOCAL_RANK that prepare_environment sets
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ConfigError, match="MASTER_ADDR, MASTER_PORT are not"):
        distributed.prepare_environment()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert distributed.prepare_environment() == 4
    assert os.environ["LOCAL_RANK"] == "1"


def test_sharded_weights_need_the_precomputed_reference(tmp_path, tiny_model_dir):
    base = dict(model_name_or_path=str(tiny_model_dir), dataset="x.jsonl", output_dir=str(tmp_path / "o"))
    # deepspeed set after loading: loading checks that the deepspeed package is installed, and this
    # test is about the sharding logic, on machines with or without it.
    plain = load_config(base, [])
    z3 = dataclasses.replace(plain, deepspeed=str(EXAMPLES / "deepspeed" / "ds_z3_config.json"))
    z2 = dataclasses.replace(plain, deepspeed=str(EXAMPLES / "deepspeed" / "ds_z2_config.json"))
    assert distributed.uses_sharded_weights(z3) and not distributed.uses_sharded_weights(z2)
    distributed.check_sharded_reference(z3)  # precompute_ref is the default: fine
    off = load_config(base | {"fsdp": "full_shard auto_wrap", "precompute_ref": False}, [])
    with pytest.raises(ConfigError, match="precompute_ref: true"):
        distributed.check_sharded_reference(off)
    distributed.check_sharded_reference(load_config(base | {"precompute_ref": False}, []))  # plain DDP: fine


def test_example_deepspeed_configs_leave_batch_and_precision_to_the_trainer():
    """The keys the transformers DeepSpeed integration fills from TrainingArguments are "auto", so the
    prefloop config (batch, accumulation, clipping, precision) is the single source of truth."""
    for stage in (2, 3):
        ds = json.loads((EXAMPLES / "deepspeed" / f"ds_z{stage}_config.json").read_text())
        assert ds["zero_optimization"]["stage"] == stage
        for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                    "gradient_clipping"):
            assert ds[key] == "auto", key
        assert ds["fp16"]["enabled"] == "auto" and ds["bf16"]["enabled"] == "auto"
        assert "optimizer" not in ds and "scheduler" not in ds  # the Trainer's optim / lr_scheduler_type apply
    fsdp = json.loads((EXAMPLES / "fsdp" / "fsdp_config.json").read_text())
    assert fsdp["fsdp_version"] == 2 and fsdp["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


def test_resume_with_the_same_world_size_continues_where_it_stopped(runs, tiny_model_dir):
    """2 ranks resume a 2-rank checkpoint-2 and end with the weights of the uninterrupted run;
    1 process refuses it with an error that names both world sizes."""
    import shutil

    tmp = runs["tmp"]
    resumed = tmp / "resumed"
    resumed.mkdir()
    shutil.copytree(runs["multi"] / "checkpoint-2", resumed / "checkpoint-2")
    shutil.copytree(runs["multi"] / "ref_cache", resumed / "ref_cache")
    config = write_config(tmp, "resumed", tiny_model_dir, tmp / "pairs.jsonl", per_device=1,
                          resume_from_checkpoint=True)
    launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), "-m", "prefloop", "train", str(config)], tmp, resumed)
    assert [h["step"] for h in history(resumed) if "loss" in h][-1] == STEPS
    a = load_file(str(runs["multi"] / "adapter_model.safetensors"))
    b = load_file(str(resumed / "adapter_model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4

    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    single = subprocess.run([sys.executable, "-m", "prefloop", "train", str(config), "output_dir=" + str(resumed),
                             "resume_from_checkpoint=" + str(resumed / "checkpoint-2")],
                            cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 2 and "written by 2 process(es) but this run has 1" in single.stderr
