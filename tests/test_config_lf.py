"""LLaMA-Factory / transformers-Trainer configs pasted verbatim (config_lf.py): translated keys with a note,
keys that make no difference accepted with a note, settings prefloop does not implement refused (file, line,
key, what to do) unless at their default, and the new optimizer/scheduler keys reaching torch."""

from pathlib import Path

import pytest
import torch

from prefloop.cli import main as cli_main
from prefloop.config import load_config
from prefloop.errors import ConfigError
from test_config import seed_path  # noqa: F401 (the fixture: examples/seed_config.yaml with a model dir)

# LLaMA-Factory's examples/train_lora/llama3_lora_dpo.yaml (with its commented eval block switched on).
LF_DPO = """\
### model
model_name_or_path: MODEL_DIR
trust_remote_code: true

### method
stage: dpo
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all
pref_beta: 0.1
pref_loss: sigmoid  # choices: [sigmoid (dpo), orpo, simpo]

### dataset
dataset: dpo_en_demo
template: llama3
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
dataloader_num_workers: 4

### output
output_dir: OUTPUT_DIR
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none  # choices: [none, wandb, tensorboard, swanlab, mlflow]

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 5.0e-6
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
resume_from_checkpoint: null

### eval
val_size: 0.1
per_device_eval_batch_size: 1
eval_strategy: steps
eval_steps: 500
"""




def _with(path: Path, *lines: str, drop: tuple[str, ...] = ()) -> Path:
    """The config at `path` without the keys `drop`, with `lines` appended."""
    kept = [l for l in path.read_text().splitlines() if not l.startswith(tuple(f"{k}:" for k in drop))]  # noqa: E741
    path.write_text("\n".join(kept + list(lines)) + "\n")
    return path


def _line_of(path: Path, key: str) -> int:
    return next(i for i, l in enumerate(path.read_text().splitlines(), 1) if l.startswith(f"{key}:"))  # noqa: E741


def test_llama_factory_dpo_example_loads_verbatim(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    path = tmp_path / "llama3_lora_dpo.yaml"
    path.write_text(LF_DPO.replace("MODEL_DIR", str(tmp_path / "model")).replace("OUTPUT_DIR", str(tmp_path / "o")))
    cfg = load_config(path)
    assert cfg.template == "llama3" and cfg.report_to == "none" and cfg.save_only_model is False
    assert cfg.lr_scheduler_type == "cosine" and cfg.warmup_ratio == 0.1 and cfg.ddp_timeout == 180000000
    err = capsys.readouterr().err
    for key in ("trust_remote_code", "overwrite_cache", "preprocessing_num_workers"):
        line = _line_of(path, key)
        assert f"{key} (line {line}): " in err and "makes no difference here" in err


# --- translations ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("written, key, expected", [
    ("evaluation_strategy: steps", "eval_strategy", "steps"),
    ("early_stopping_steps: 3", "early_stopping_patience", 3),
    ("per_gpu_train_batch_size: 4", "per_device_train_batch_size", 4),
    ("disable_gradient_checkpointing: true", "gradient_checkpointing", False),
    ("disable_gradient_checkpointing: false", "gradient_checkpointing", True),  # LLaMA-Factory checkpoints by default
    ("neat_packing: true", "packing", True),
    ("report_to: null", "report_to", "none"),
])
def test_translated_keys_become_prefloop_keys_with_a_note(seed_path, capsys, written, key, expected):
    old = written.split(":")[0]
    path = _with(seed_path, written, drop=(key, old) if key != "report_to" else (old,))
    cfg = load_config(path)
    assert getattr(cfg, key) == expected
    err = capsys.readouterr().err
    assert f"{old} (line {_line_of(path, old)})" in err and "note" in err


def test_a_translated_key_works_on_the_command_line(seed_path, capsys):
    cfg = load_config(seed_path, ["evaluation_strategy=no", "disable_gradient_checkpointing=true"])
    assert cfg.eval_strategy == "no" and cfg.gradient_checkpointing is False  # the override wins over the file
    assert "evaluation_strategy" in capsys.readouterr().err


def test_two_spellings_that_disagree_in_one_file_name_both_lines(seed_path):
    path = _with(seed_path, "evaluation_strategy: epoch")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert f"evaluation_strategy (line {_line_of(path, 'evaluation_strategy')})" in msg
    assert f"(line {_line_of(path, 'eval_strategy')})" in msg and "keep one" in msg
    path = _with(seed_path, "disable_gradient_checkpointing: true", drop=("evaluation_strategy",))  # the seed says gradient_checkpointing: true
    with pytest.raises(ConfigError, match="disable_gradient_checkpointing .*gradient_checkpointing is also given"):
        load_config(path)


def test_pref_bco_weight_is_a_bco_pair_term_weighted_as_llama_factory(seed_path, capsys):
    from prefloop.train.losses import build_loss_spec

    cfg = load_config(_with(seed_path, "pref_bco_weight: 0.5"))
    assert cfg.pref_loss == ["sigmoid", "bco_pair"]
    assert cfg.pref_loss_weights == pytest.approx([1 / 1.5, 0.5 / 1.5])  # (loss + w * bco) / (1 + w)
    assert list(build_loss_spec(cfg).names) == ["sigmoid", "bco_pair"]  # the loss is built from it
    assert "pref_bco_weight" in capsys.readouterr().err
    assert load_config(seed_path, ["pref_bco_weight=0"]).pref_loss == "sigmoid"  # LLaMA-Factory's default
    with pytest.raises(ConfigError, match="pref_bco_weight: -1 is not allowed"):
        load_config(seed_path, ["pref_bco_weight=-1"])
    with pytest.raises(ConfigError, match="give bco_pair in pref_loss"):
        load_config(seed_path, ["pref_bco_weight=0.5", "pref_loss=[sigmoid,sft]", "pref_loss_weights=[1,1]"])


# --- keys that make no difference, keys at their defaults --------------------------------------------------------

def test_keys_that_make_no_difference_are_accepted_with_a_note(seed_path, capsys):
    path = _with(seed_path, "flash_attn: fa2", "use_unsloth_gc: true", "enable_liger_kernel: true",
                 "logging_dir: logs", "include_num_input_tokens_seen: true", "hf_hub_token: hf_x")
    load_config(path)
    err = capsys.readouterr().err
    for key in ("flash_attn", "use_unsloth_gc", "enable_liger_kernel", "logging_dir", "include_num_input_tokens_seen",
                "hf_hub_token"):
        assert f"{key} (line {_line_of(path, key)}): " in err
    assert "accepted and ignored" in err


def test_unimplemented_keys_at_their_defaults_are_accepted(seed_path, capsys):
    defaults = ["quantization_bit: null", "use_galore: false", "kto_chosen_weight: 1.0", "ppo_epochs: 4",
                "model_revision: main", "push_to_hub: false", "neftune_noise_alpha: null", "train_on_prompt: false",
                "loraplus_lr_embedding: 1.0e-6", "label_smoothing_factor: 0.0", "freeze_vision_tower: true",
                "mix_strategy: concat", "double_quantization: true", "pref_bco_weight: 0.0"]
    path = _with(seed_path, *defaults)
    load_config(path)
    err = capsys.readouterr().err
    assert "accepted at their defaults" in err and f"ppo_epochs (line {_line_of(path, 'ppo_epochs')})" in err


# --- refusals ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("written, message", [
    ("quantization_bit: 4", "on-the-fly quantization (QLoRA)) is not implemented in prefloop"),
    ("use_galore: true", "GaLore"),
    ("loraplus_lr_ratio: 16.0", "LoRA+"),
    ("neftune_noise_alpha: 5", "NEFTune"),
    ("eval_dataset: my_eval", "val_size"),
    ("label_smoothing_factor: 0.1", "dpo_label_smoothing"),
    ("load_best_model_at_end: true", "early_stopping_patience"),
    ("model_revision: v2", "huggingface-cli download"),
    ("use_swanlab: true", "report_to: swanlab"),
    ("kto_chosen_weight: 2.0", "stage: kto"),
    ("ppo_epochs: 2", "stage: ppo"),
    ("reward_model: rm_dir", "stage: ppo"),
    ("train_on_prompt: true", "stage: sft"),
])
def test_settings_prefloop_lacks_are_refused_with_the_line(seed_path, written, message):
    path = _with(seed_path, written)
    key = written.split(":")[0]
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: {key}: ") and message in msg
    assert msg.endswith(f"(line {_line_of(path, key)})")


def test_a_refusal_exits_2_through_the_cli(seed_path, capsys):
    path = _with(seed_path, "use_badam: true")
    assert cli_main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "use_badam: true (BAdam) is not implemented" in err and f"(line {_line_of(path, 'use_badam')})" in err


@pytest.mark.parametrize("stage, advice", [
    ("sft", "run SFT with LLaMA-Factory or TRL"),
    ("pt", "pre-train with LLaMA-Factory"),
    ("rm", "prefloop judge --reward-model"),
    ("ppo", "prefloop loop"),
    ("kto", "pref_loss: kto_pair"),
])
def test_other_stages_are_refused_with_what_prefloop_offers(seed_path, stage, advice):
    path = _with(seed_path, f"stage: {stage}", drop=("stage",))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert f"stage: '{stage}' is not allowed" in msg and advice in msg
    assert msg.endswith(f"(line {_line_of(path, 'stage')})")


def test_a_round_may_use_llama_factory_names(seed_path, tmp_path):
    data = tmp_path / "r1.jsonl"
    data.write_text("")
    path = _with(seed_path, "rounds:", f"  - dataset: {data}", "    evaluation_strategy: 'no'",
                 drop=("dataset", "eval_strategy", "eval_steps"))
    from prefloop.config import round_configs

    cfg = load_config(path)
    assert round_configs(cfg)[0].eval_strategy == "no"
    path = _with(path, "  - dataset: x", "    ppo_epochs: 2")
    with pytest.raises(ConfigError, match=r"rounds\[2\].*ppo_epochs: 2 is LLaMA-Factory's setting for stage: ppo"):
        load_config(path)


# --- the template ------------------------------------------------------------------------------------------------

def test_an_unknown_template_is_refused_at_load_with_the_closest_names(seed_path):
    path = _with(seed_path, "template: llama-3", drop=("template",))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "template: 'llama-3' is not a chat template prefloop knows (closest: llama3" in msg
    assert msg.endswith(f"(line {_line_of(path, 'template')})")
    with pytest.raises(ConfigError, match="template: 'yes' is not a chat template"):  # the text as written
        load_config(seed_path, ["template=yes"])
    assert load_config(seed_path, ["template=Qwen"]).template == "Qwen"  # built-in names are case-insensitive
    assert load_config(seed_path, ["template=tokenizer"]).template == "tokenizer"


# --- the new optimizer and scheduler keys -----------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (["adam_beta1=1.0"], "adam_beta1: 1.0 is not allowed; it must be in [0, 1)"),
    (["adam_beta2=-0.1"], "adam_beta2: -0.1 is not allowed"),
    (["adam_epsilon=0"], "adam_epsilon: 0.0 is not allowed; it must be > 0"),
    (["adam_beta1=abc"], "adam_beta1: 'abc' is not allowed; expected a number"),
    (["optim=sgd", "adam_beta2=0.95"], "adam_beta2: optim: sgd does not use adam_beta2"),
    (["lr_scheduler_kwargs={num_cycle: 0.5}"], "'num_cycle' is not an argument of lr_scheduler_type: cosine "
                                               "(did you mean 'num_cycles'?)"),
    (["lr_scheduler_type=constant", "lr_scheduler_kwargs={num_cycles: 0.5}"], "it takes none"),
    (["lr_scheduler_type=cosine_with_min_lr"], "needs min_lr (an absolute rate) or min_lr_rate"),
    (["lr_scheduler_kwargs={num_cycles: abc}"], "lr_scheduler_kwargs: {'num_cycles': 'abc'} is not allowed"),
    (["lr_scheduler_kwargs=[1]"], "lr_scheduler_kwargs: [1] is not allowed; expected a mapping"),
    (["warmup_steps=10"], "warmup_steps: 10 and warmup_ratio: 0.1 are both set; give one of them"),
    (["warmup_steps=0.5", "warmup_ratio=0"], "warmup_steps: '0.5' (YAML reads it as 0.5) is not allowed; expected an integer"),
    (["save_only_model=true", "resume_from_checkpoint=true"], "save_only_model: true writes checkpoints without"),
])
def test_new_trainer_keys_are_checked(seed_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(seed_path, overrides)
    assert message in str(err.value)


def test_a_bad_new_key_in_the_file_names_its_line(seed_path):
    path = _with(seed_path, "warmup_steps: 20")
    # both keys are in the file: each with its line (user trial U1)
    with pytest.raises(ConfigError, match=rf"warmup_steps: 20 and warmup_ratio.*\(warmup_steps: line "
                                          rf"{_line_of(path, 'warmup_steps')}, warmup_ratio: line "
                                          rf"{_line_of(path, 'warmup_ratio')}\)"):
        load_config(path)


def _trainer(cfg):
    from prefloop.testing import build_tiny_model, build_tiny_tokenizer
    from prefloop.data.schema import EncodedPair
    from prefloop.train.dataset import PairCollator, PairDataset
    from prefloop.train.losses import build_loss_spec
    from prefloop.train.trainer import PreferenceTrainer, build_training_arguments

    tokenizer = build_tiny_tokenizer()
    enc = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    pairs = [EncodedPair(enc(f"what is {i} plus {i}?"), enc(f"it is {2 * i}."), enc("no idea"), id=f"p{i}")
             for i in range(4)]
    return PreferenceTrainer(model=build_tiny_model(tokenizer).train(), args=build_training_arguments(cfg),
                             train_dataset=PairDataset.from_encoded(pairs),
                             data_collator=PairCollator("padded", tokenizer.pad_token_id),
                             loss_spec=build_loss_spec(cfg))


def _cfg(tmp_path, **overrides):
    (tmp_path / "model").mkdir(exist_ok=True)
    base = dict(model_name_or_path=str(tmp_path / "model"), output_dir=str(tmp_path / "out"), dataset="d.jsonl",
                pref_loss="simpo", report_to="none", finetuning_type="full", per_device_train_batch_size=2,
                logging_steps=1, learning_rate=1e-3)
    return load_config({**base, **overrides})


def test_adam_betas_and_epsilon_reach_torch_adamw(tmp_path):
    cfg = _cfg(tmp_path, adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6, weight_decay=0.01, max_steps=4)
    trainer = _trainer(cfg)
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, torch.optim.AdamW)
    for group in optimizer.param_groups:
        assert group["betas"] == (0.8, 0.95) and group["eps"] == 1e-6 and group["lr"] == 1e-3
    assert optimizer.defaults["betas"] == (0.8, 0.95) and optimizer.defaults["eps"] == 1e-6
    default = _trainer(_cfg(tmp_path, max_steps=4)).create_optimizer()
    assert default.defaults["betas"] == (0.9, 0.999) and default.defaults["eps"] == 1e-8


def test_scheduler_kwargs_and_warmup_steps_reach_the_schedule(tmp_path):
    cfg = _cfg(tmp_path, lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1},
               warmup_steps=2, max_steps=10)
    trainer = _trainer(cfg)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    rates = []
    for _ in range(11):
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert rates[0] == 0 and rates[1] == pytest.approx(5e-4) and rates[2] == pytest.approx(1e-3)  # 2 warmup steps
    assert rates[10] == pytest.approx(1e-4)  # decays to min_lr_rate * learning_rate, not to 0


def test_save_only_model_checkpoints_hold_no_optimizer_state(tmp_path):
    for only_model in (True, False):
        out = tmp_path / f"out-{only_model}"
        cfg = _cfg(tmp_path, output_dir=str(out), max_steps=1, save_steps=1, save_only_model=only_model)
        trainer = _trainer(cfg)
        assert trainer.args.save_only_model is only_model
        trainer.train()
        checkpoint = out / "checkpoint-1"
        assert checkpoint.is_dir() and (checkpoint / "model.safetensors").is_file()
        assert (checkpoint / "optimizer.pt").is_file() is not only_model


def test_scheduler_kwargs_written_as_yaml_1_1_text_are_numbers(seed_path):
    """YAML 1.1 reads `min_lr: 1e-6` (no dot) as the text '1e-6'; the schedule must get the number."""
    path = _with(seed_path, "lr_scheduler_type: cosine_with_min_lr", "lr_scheduler_kwargs: {min_lr: 1e-6}",
                 drop=("lr_scheduler_type",))
    assert load_config(path).lr_scheduler_kwargs == {"min_lr": 1e-6}


def test_a_rounds_pref_bco_weight_adds_to_the_base_loss(seed_path, tmp_path):
    from prefloop.config import round_configs

    data = tmp_path / "r1.jsonl"
    data.write_text("")
    path = _with(seed_path, "rounds:", f"  - dataset: {data}", "    pref_bco_weight: 1.0",
                 drop=("dataset", "pref_loss"))
    path = _with(path, "pref_loss: ipo")
    (round_cfg,) = round_configs(load_config(path))
    assert round_cfg.pref_loss == ["ipo", "bco_pair"] and round_cfg.pref_loss_weights == [0.5, 0.5]
