"""Training config: the seed's YAML verbatim, overrides, clear errors, fp16 fallback, saving."""

import re
from pathlib import Path

import pytest
import yaml

from prefloop import config as config_module
from prefloop.cli import main as cli_main
from prefloop.config import CONFIG_FILENAME, Config, load_config, resolve_precision, save_config
from prefloop.errors import ConfigError

SEED = Path(__file__).resolve().parents[1] / "examples" / "seed_config.yaml"


@pytest.fixture()
def seed_path(tmp_path):
    (tmp_path / "model").mkdir()
    text = SEED.read_text().replace("MODEL_DIR", str(tmp_path / "model")).replace("OUTPUT_DIR", str(tmp_path / "out"))
    path = tmp_path / "seed.yaml"
    path.write_text(text)
    return path


def test_seed_config_loads_verbatim_with_types(seed_path):
    cfg = load_config(seed_path)
    assert cfg.stage == "dpo" and cfg.dataset == "comparison_gpt4_en" and cfg.template == "qwen"
    assert cfg.pref_beta == 0.1 and cfg.pref_loss == "sigmoid" and cfg.cutoff_len == 2048
    assert cfg.learning_rate == 5.0e-7 and isinstance(cfg.num_train_epochs, float)
    assert cfg.lr_scheduler_type == "cosine" and cfg.warmup_ratio == 0.1
    assert cfg.fp16 is True and cfg.gradient_checkpointing is True
    assert cfg.finetuning_type == "lora" and cfg.lora_target == "all" and cfg.lora_rank == 16
    assert cfg.resolved_lora_alpha == 32 and cfg.val_size == 0.1 and cfg.eval_steps == 100
    assert cfg.run_eval and cfg.layout == "packed_prefix_shared" and cfg.precompute_ref is True
    assert cfg.dataset_dir == "data"


def test_overrides_from_the_command_line_are_typed(seed_path):
    cfg = load_config(seed_path, ["learning_rate=1e-6", "pref_loss=ipo", "lora_target=q_proj,v_proj",
                                  "packing=false", "prefix_sharing=true", "max_samples=100"])
    assert cfg.learning_rate == 1e-6 and cfg.pref_loss == "ipo" and cfg.max_samples == 100
    assert cfg.lora_target == "q_proj,v_proj" and cfg.layout == "prefix_shared"
    listed = load_config(seed_path, ["pref_loss=[sigmoid, hinge]", "pref_loss_weights=[0.8, 0.2]"])
    assert listed.pref_loss == ["sigmoid", "hinge"] and listed.pref_loss_weights == [0.8, 0.2]


def test_memory_and_attention_keys(seed_path):
    cfg = load_config(seed_path, ["gradient_checkpointing=auto", "max_memory_gb=20", "attn_backend=flex"])
    assert cfg.gradient_checkpointing == "auto" and cfg.max_memory_gb == 20.0 and cfg.attn_backend == "flex"
    assert load_config(seed_path, ["gradient_checkpointing=true"]).gradient_checkpointing is True
    assert load_config(seed_path).attn_backend == "auto"


def test_python_overrides_and_dicts(seed_path, tmp_path):
    cfg = load_config(seed_path, {"pref_beta": 0.2, "resume_from_checkpoint": True})
    assert cfg.pref_beta == 0.2 and cfg.resume_from_checkpoint is True
    again = load_config(cfg.to_dict())
    assert again == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("lerning_rate=1e-6", "unknown key 'lerning_rate' (did you mean 'learning_rate'?)"),
        ("pref_los=ipo", "did you mean 'pref_loss'?"),
        ("pref_loss=foo", "'foo'"),
        ("pref_beta=-1", "pref_beta: -1.0 is not allowed; it must be > 0"),
        ("lora_rank=abc", "lora_rank: 'abc' is not allowed; expected an integer"),
        ("fp16=maybe", "fp16: 'maybe' is not allowed; expected true or false"),
        ("finetuning_type=qlora", "expected one of 'lora', 'full', 'freeze'"),
        ("lr_scheduler_type=cosin", "did you mean 'cosine'?"),
        ("val_size=0", "eval_strategy: steps needs a validation split; set val_size"),
        ("warmup_ratio=1.5", "warmup_ratio: 1.5 is not allowed; it must be in [0, 1)"),
        ("model_name_or_path=checkpoints/sft/chat-model", "does not exist; give a local model directory, a .gguf file"),
        ("stage=ppo", "stage: 'ppo' is not allowed; expected one of 'dpo'"),
        ("dpo_label_smoothing=0.1 pref_loss=hinge", "dpo_label_smoothing"),
        ("attn_backend=flash", "attn_backend: 'flash' is not allowed; expected one of 'auto', 'segments', 'varlen', 'flex'"),
        ("gradient_checkpointing=some", "expected true or false or one of 'auto'"),
        ("max_memory_gb=0", "max_memory_gb: 0.0 is not allowed; give the memory budget in GB"),
    ],
)
def test_config_errors_say_what_is_allowed(seed_path, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(seed_path, override.split())
    assert message in str(err.value)
    if "pref_loss=" in override:  # losses.py words these; they must name the choices
        assert "sigmoid" in str(err.value)


def test_unknown_key_in_the_file_names_the_file(seed_path):
    seed_path.write_text(seed_path.read_text() + "lora_rnk: 8\n")
    with pytest.raises(ConfigError, match=r"seed.yaml: unknown key 'lora_rnk' \(did you mean 'lora_rank'\?\)"):
        load_config(seed_path)


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model_name_or_path: x\npref_beta: [0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml, line \d+: not valid YAML"):
        load_config(path)


def test_fp16_without_cuda_falls_back_with_one_line_warning(seed_path, capsys, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: fp16 is honoured")
    cfg = load_config(seed_path)
    for has_bf16, expect_bf16 in ((True, True), (False, False)):
        monkeypatch.setattr(config_module, "cpu_supports_bf16", lambda: has_bf16)
        resolved = resolve_precision(cfg)
        assert resolved.fp16 is False and resolved.bf16 is expect_bf16
        lines = [line for line in capsys.readouterr().err.splitlines() if line]
        assert len(lines) == 1 and "fp16" in lines[0] and ("bf16" if expect_bf16 else "fp32") in lines[0]


def test_resolved_config_is_saved_and_reloads(seed_path, tmp_path):
    cfg = load_config(seed_path, ["pref_loss=ipo"])
    path = save_config(cfg, tmp_path / "out")
    assert path.name == CONFIG_FILENAME
    saved = yaml.safe_load(path.read_text())
    assert saved["pref_loss"] == "ipo" and saved["precompute_ref"] is True
    assert load_config(path) == cfg


def test_training_arguments_mapping(seed_path):
    from prefloop.train.trainer import build_training_arguments

    cfg = resolve_precision(load_config(seed_path))
    args = build_training_arguments(cfg)
    assert args.warmup_steps == pytest.approx(0.1)  # transformers 5: a float in [0, 1) is the ratio
    assert args.lr_scheduler_type.value == "cosine" and args.gradient_accumulation_steps == 32
    assert args.eval_strategy.value == "steps" and args.eval_steps == 100 and args.save_steps == 500
    assert args.logging_steps == 5 and args.learning_rate == 5.0e-7 and not args.fp16


def test_cli_reports_config_errors_with_exit_code_2(seed_path, capsys):
    assert cli_main(["train", str(seed_path), "lerning_rate=1e-6"]) == 2
    assert "did you mean 'learning_rate'?" in capsys.readouterr().err
    assert cli_main(["train", "--config_file", str(seed_path), "pref_beta=0"]) == 2
    assert "pref_beta: 0.0 is not allowed" in capsys.readouterr().err
    assert cli_main(["train"]) == 2
    assert "no config file" in capsys.readouterr().err


def test_every_field_has_a_default():
    cfg = Config()
    assert cfg.layout == "packed_prefix_shared" and cfg.max_bad_steps == 3 and cfg.report_to == "tensorboard"


# --- issue 12 items 6 and 7: YAML's implicit typing and keys given twice -----------------------------------


@pytest.mark.parametrize("key, written, expected", [
    ("save_strategy", "no", "no"),  # YAML 1.1 reads `no` as false: was "False is not allowed"
    ("eval_strategy", "no", "no"),
    ("lora_target", "on", "on"),  # `on` is true in YAML 1.1
    ("ref_cache_dir", "yes", "yes"),  # (was template: yes, now refused at load as no known chat template)
    ("dataset", "2024-01-01", "2024-01-01"),  # a date in YAML
    ("dataset_dir", "1.10", "1.10"),  # the float 1.1 in YAML
    ("dataset_dir", "0x1F", "0x1F"),  # the integer 31 in YAML
    ("resume_from_checkpoint", "true", True),  # a bool or a path: the bool stays a bool
    ("template", "null", None),  # a key that may be null: null stays null
])
@pytest.mark.parametrize("where", ["file", "command line"])
def test_text_valued_keys_get_the_text_as_written(seed_path, key, written, expected, where):
    lines = [l for l in seed_path.read_text().splitlines() if not l.startswith(f"{key}:")]  # noqa: E741
    overrides = [f"{key}={written}"] if where == "command line" else []
    if where == "file":
        lines.append(f"{key}: {written}")
    seed_path.write_text("\n".join(lines) + "\n")
    assert getattr(load_config(seed_path, overrides), key) == expected


def test_list_elements_get_the_text_as_written(seed_path):
    seed_path.write_text(seed_path.read_text().replace("pref_loss: sigmoid", "pref_loss: [sigmoid, no]"))
    with pytest.raises(ConfigError, match="'no'"):  # the text "no" reaches the loss check, not False
        load_config(seed_path)
    assert load_config(seed_path, ["pref_loss=[sigmoid, hinge]"]).pref_loss == ["sigmoid", "hinge"]


def test_save_strategy_no_trains_without_checkpoints_on_the_command_line(seed_path):
    cfg = load_config(seed_path, ["save_strategy=no", "learning_rate=1.0e-4"])
    assert cfg.save_strategy == "no" and cfg.learning_rate == 1e-4


def test_a_number_written_where_a_number_belongs_is_still_a_number(seed_path):
    seed_path.write_text(seed_path.read_text().replace("learning_rate: 5.0e-7", "learning_rate: 1e-4"))
    cfg = load_config(seed_path, ["lora_rank=4", "gradient_checkpointing=no"])
    assert cfg.learning_rate == 1e-4 and cfg.lora_rank == 4 and cfg.gradient_checkpointing is False


def test_a_key_given_twice_is_an_error_naming_both_lines(seed_path):
    """Input: learning_rate 1.0e-4 near the top and 5.0e-7 further down. Right value: a located error."""
    lines = seed_path.read_text().splitlines()
    seed_path.write_text("\n".join(["learning_rate: 1.0e-4"] + lines) + "\n")
    second = 1 + next(i for i, l in enumerate(lines) if l.startswith("learning_rate:")) + 1  # noqa: E741
    with pytest.raises(ConfigError) as err:
        load_config(seed_path)
    assert str(err.value).startswith(f"{seed_path}, line {second}: key 'learning_rate' is given twice (first on line 1)")


def test_a_nested_key_given_twice_is_an_error_too(tmp_path, seed_path):
    seed_path.write_text(seed_path.read_text() + "fsdp_config:\n  min_num_params: 1\n  min_num_params: 2\n")
    with pytest.raises(ConfigError, match="key 'min_num_params' is given twice"):
        load_config(seed_path)


def test_a_key_given_twice_exits_2_through_the_cli(seed_path, capsys):
    seed_path.write_text(seed_path.read_text() + "pref_beta: 0.5\npref_beta: 0.2\n")
    assert cli_main(["train", str(seed_path)]) == 2
    assert "key 'pref_beta' is given twice" in capsys.readouterr().err


# --- issue 12 item 18: optional integrations checked at start --------------------------------------------


def _installed(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.skipif(_installed("wandb"), reason="wandb is installed here")
def test_report_to_wandb_without_wandb_is_an_error_before_any_model_loads(seed_path, capsys):
    """Input: report_to: wandb, wandb not installed, and a model directory that holds no model (loading
    it would fail). Right value: exit 2 with a message naming the file, the key and the package."""
    seed_path.write_text(seed_path.read_text() + "report_to: wandb\n")
    assert cli_main(["train", str(seed_path)]) == 2
    err = capsys.readouterr().err
    assert (f"{seed_path}: report_to: wandb needs the Python package 'wandb', which is not installed: "
            "`pip install wandb`") in err
    assert "Traceback" not in err


@pytest.mark.parametrize("override, message", [
    ("report_to=[tensorboard, wandb]", "report_to: wandb needs the Python package 'wandb'"),
    ("report_to=tensorboard,wandb", "report_to: wandb needs the Python package 'wandb'"),
    ("report_to=wandbb", "report_to: 'wandbb' is not an integration transformers knows (did you mean 'wandb'?)"),
    ("optim=adamw_bnb_8bit", "optim: adamw_bnb_8bit needs the Python package 'bitsandbytes'"),
    (f"deepspeed={SEED.parent / 'deepspeed' / 'ds_z2_config.json'}",
     "deepspeed: a DeepSpeed config is given but the Python package 'deepspeed' is not installed"),
])
def test_every_optional_integration_is_checked(seed_path, override, message):
    if any(package in message and _installed(package) for package in ("wandb", "bitsandbytes", "deepspeed")):
        pytest.skip("the package is installed here")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(seed_path, [override])


def test_installed_integrations_pass(seed_path):
    assert load_config(seed_path, ["report_to=tensorboard"]).report_to == "tensorboard"
    assert load_config(seed_path, ["report_to=none"]).report_to == "none"


def test_a_non_text_key_shows_the_value_as_written(seed_path):
    with pytest.raises(ConfigError, match=r"lora_rank: 'no' \(YAML reads it as False\) is not allowed; expected an integer"):
        load_config(seed_path, ["lora_rank=no"])


# --- audit: peers' config reports (LLaMA-Factory keys verbatim, YAML types, env vars, located errors) -------------


def _line_of(path, key):
    return 1 + next(i for i, line in enumerate(path.read_text().splitlines()) if line.startswith(f"{key}:"))


def test_unknown_and_mistyped_keys_name_the_file_and_the_line(seed_path):
    """LLaMA-Factory/HfArgumentParser report an unknown key without saying where it is. Right value: the file,
    the key and its line (and the closest known key)."""
    seed_path.write_text(seed_path.read_text() + "lora_rnk: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(seed_path)
    assert str(seed_path) in str(err.value) and f"(line {_line_of(seed_path, 'lora_rnk')})" in str(err.value)
    seed_path.write_text(seed_path.read_text().replace("lora_rnk: 8\n", "").replace("lora_rank: 16", "lora_rank: eight"))
    with pytest.raises(ConfigError, match=rf"lora_rank: 'eight' is not allowed; expected an integer \(line "
                                          rf"{_line_of(seed_path, 'lora_rank')}\)"):
        load_config(seed_path)
    seed_path.write_text(seed_path.read_text().replace("lora_rank: eight", "lora_rank: 8\nwarmup_steps: -3"))
    with pytest.raises(ConfigError, match=rf"warmup_steps: -3 is not allowed.*\(line {_line_of(seed_path, 'warmup_steps')}\)"):
        load_config(seed_path)


@pytest.mark.parametrize("written, expected", [("1e-5", 1e-5), ("5e-7", 5e-7), ("'2e-6'", 2e-6), ("1.0e-4", 1e-4), ("3", 3.0)])
def test_a_learning_rate_yaml_reads_as_text_is_a_number(seed_path, written, expected):
    """YAML 1.1 reads `1e-5` (no dot) as the string "1e-5" (LLaMA-Factory issues 4014/4149, TRL PR 1450: a
    TypeError deep in the optimizer). Right value: the float."""
    seed_path.write_text(seed_path.read_text().replace("learning_rate: 5.0e-7", f"learning_rate: {written}"))
    cfg = load_config(seed_path)
    assert isinstance(cfg.learning_rate, float) and cfg.learning_rate == pytest.approx(expected)


def test_integers_and_booleans_written_as_peers_accept_them(seed_path):
    cfg = load_config(seed_path, ["save_steps=1e3", "lora_alpha=1e2", "fp16=0", "bf16=1", "plot_loss=True"])
    assert cfg.save_steps == 1000 and cfg.lora_alpha == 100 and cfg.bf16 is True and cfg.fp16 is False
    assert cfg.plot_loss is True
    assert load_config(seed_path, ["save_steps=1.5e3"]).save_steps == 1500
    with pytest.raises(ConfigError, match="save_steps: '2.5e-1'.* is not allowed; expected an integer"):
        load_config(seed_path, ["save_steps=2.5e-1"])


def test_command_line_overrides_with_lists_and_bools(seed_path):
    cfg = load_config(seed_path, ["lora_target=[q_proj, v_proj]", "report_to=[tensorboard]", "packing=False",
                                  "dataset=[a.jsonl, b.jsonl]", "freeze_trainable_modules=mlp,self_attn",
                                  "resume_from_checkpoint=true"])
    assert cfg.lora_target == ["q_proj", "v_proj"] and cfg.report_to == ["tensorboard"] and cfg.packing is False
    assert cfg.dataset == ["a.jsonl", "b.jsonl"] and cfg.freeze_trainable_modules == "mlp,self_attn"
    assert cfg.resume_from_checkpoint is True


def test_environment_variables_in_the_config(seed_path, monkeypatch):
    """`${oc.env:NAME}` (OmegaConf, LLaMA-Factory's config reader) and `${NAME}` were kept as literal text.
    Right value: the variable's value, typed like a command-line value; a default when unset; an error
    naming the file, the line and the variable when unset without a default."""
    monkeypatch.setenv("PF_OUT", "/runs/today")
    monkeypatch.setenv("PF_LR", "1e-5")
    monkeypatch.setenv("PF_TARGETS", "[q_proj, v_proj]")
    monkeypatch.delenv("PF_UNSET", raising=False)
    text = seed_path.read_text()
    text = text.replace("learning_rate: 5.0e-7", "learning_rate: ${PF_LR}").replace("lora_target: all", "lora_target: ${oc.env:PF_TARGETS}")
    text = re.sub(r"output_dir: .*", "output_dir: ${PF_OUT}/dpo", text)
    text = text.replace("template: qwen", "template: ${oc.env:PF_UNSET,chatml}")
    seed_path.write_text(text + "seed: ${PF_UNSET:-7}\n")
    cfg = load_config(seed_path)
    assert cfg.output_dir == "/runs/today/dpo" and cfg.learning_rate == 1e-5 and cfg.seed == 7
    assert cfg.lora_target == ["q_proj", "v_proj"] and cfg.template == "chatml"
    seed_path.write_text(re.sub(r"ref_model: .*", "ref_model: ${PF_UNSET}", seed_path.read_text()))
    with pytest.raises(ConfigError) as err:
        load_config(seed_path)
    assert f"ref_model (line {_line_of(seed_path, 'ref_model')})" in str(err.value)
    assert "PF_UNSET, which is not set" in str(err.value)


def test_a_quoted_whole_reference_stays_text_and_double_dollar_is_a_literal(seed_path, monkeypatch):
    """A value that was one `${NAME}` was re-read as YAML even when quoted (`"${NAME}"` with NAME=~ gave None,
    NAME=[a] a list), and a literal `${` could not be written. Right value: quoted, the variable's text;
    unquoted, typed like a command-line value; `$${` is a literal `${` (not looked up)."""
    monkeypatch.setenv("PF_TILDE", "~")
    monkeypatch.setenv("PF_LIST", "[q_proj]")
    monkeypatch.setenv("PF_LR", "1e-5")
    monkeypatch.setenv("PF_DIR", "/runs")
    monkeypatch.delenv("PF_UNSET", raising=False)
    text = seed_path.read_text()
    text += 'ref_cache_dir: "${PF_TILDE}"\n'
    text = text.replace("lora_target: all", "lora_target: '${oc.env:PF_LIST}'")
    text = text.replace("learning_rate: 5.0e-7", 'learning_rate: "${PF_LR}"')  # text, then the number key's number
    text = re.sub(r"output_dir: .*", "output_dir: $${PF_UNSET}/$${x}/${PF_DIR}", text)
    seed_path.write_text(text)
    cfg = load_config(seed_path)
    assert cfg.ref_cache_dir == "~" and cfg.lora_target == "[q_proj]" and cfg.learning_rate == 1e-5
    assert cfg.output_dir == "${PF_UNSET}/${x}//runs"
    text = text.replace('ref_cache_dir: "${PF_TILDE}"', "ref_cache_dir: ${PF_TILDE}")
    text = text.replace("lora_target: '${oc.env:PF_LIST}'", "lora_target: ${oc.env:PF_LIST}")
    text = re.sub(r"output_dir: .*", "output_dir: $${PF_UNSET}", text)
    seed_path.write_text(text)
    cfg = load_config(seed_path)
    assert cfg.ref_cache_dir is None and cfg.lora_target == ["q_proj"] and cfg.output_dir == "${PF_UNSET}"


@pytest.mark.parametrize("overrides, message", [
    (["freeze_trainable_layers=0"], "freeze_trainable_layers: 0 is not allowed"),
    (["finetuning_type=full", "use_dora=true"], "use_dora needs finetuning_type: lora"),
    (["fp16=true", "pure_bf16=true"], "fp16 and pure_bf16 are both true"),
    (["seed=-1"], "seed: -1 is not allowed"),
])
def test_llama_factory_keys_are_checked(seed_path, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(seed_path, overrides)


def test_llama_factory_keys_verbatim(seed_path):
    cfg = load_config(seed_path, ["finetuning_type=freeze", "freeze_trainable_layers=-2",
                                  "freeze_trainable_modules=mlp,self_attn", "freeze_extra_modules=embed_tokens",
                                  "fp16=false", "pure_bf16=true", "use_rslora=false", "disable_dropout=false",
                                  "val_size=100", "max_samples=1000", "dpo_label_smoothing=0.1", "pref_ftx=0.5"])
    assert cfg.freeze_trainable_layers == -2 and cfg.freeze_trainable_modules == "mlp,self_attn"
    assert cfg.freeze_extra_modules == "embed_tokens" and cfg.pure_bf16 and cfg.disable_dropout is False
    assert cfg.val_size == 100 and cfg.has_validation and cfg.max_samples == 1000
    lora = load_config(seed_path, ["use_dora=true", "use_rslora=true"])
    assert lora.use_dora and lora.use_rslora and lora.disable_dropout is True  # TRL's and LLaMA-Factory's default


def test_an_adapter_directory_where_a_model_belongs(seed_path, tmp_path):
    """A LoRA adapter directory given as model_name_or_path failed deep in PEFT (NoMatchingPeftModuleError);
    as ref_model it loaded through transformers' PEFT integration unchecked. Right value: the adapter's base
    as the model and the adapter continued (adapter_name_or_path) / applied to the reference
    (ref_model_adapters); with full fine-tuning an error that says to merge first."""
    import json

    base = tmp_path / "model"
    (base / "config.json").write_text("{}")
    adapter = tmp_path / "sft-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "peft_type": "LORA"}))
    cfg = load_config(seed_path, [f"model_name_or_path={adapter}", f"ref_model={adapter}"])
    assert cfg.model_name_or_path == str(base) and cfg.adapter_name_or_path == str(adapter)
    assert cfg.ref_model == str(base) and cfg.ref_model_adapters == str(adapter)
    with pytest.raises(ConfigError, match="full fine-tuning needs a whole model: `prefloop merge"):
        load_config(seed_path, [f"model_name_or_path={adapter}", "finetuning_type=full"])


# --- user trial U1: where a cross-field error's keys came from; every typo at once ------------------------------


@pytest.mark.parametrize("overrides, expected", [
    # bf16 from the command line, fp16 from the file: each key with its own source
    (["bf16=true"], "fp16 and bf16 are both true: choose one (fp16: SEED, line 18; bf16: command line)"),
    # both from the command line: the file is not blamed
    (["fp16=true", "bf16=true", "val_size=0.1"], "command line: fp16 and bf16 are both true: choose one"),
    (["val_size=0"], "(eval_strategy: SEED, line 25; val_size: command line)"),
    (["eval_strategy=epoch", "val_size=0"], "command line: eval_strategy: epoch needs a validation split"),
])
def test_cross_field_errors_name_where_each_key_came_from(seed_path, overrides, expected):
    """`llama3_lora_dpo.yaml: fp16 and bf16 are both true` blamed the file for bf16=true given on the command line."""
    with pytest.raises(ConfigError) as err:
        load_config(seed_path, overrides)
    assert expected.replace("SEED", str(seed_path)) in str(err.value)
    if expected.startswith("command line"):
        assert "seed.yaml" not in str(err.value)


def test_both_keys_in_the_file_name_their_lines(seed_path):
    seed_path.write_text(seed_path.read_text() + "bf16: true\n")
    line = len(seed_path.read_text().splitlines())
    with pytest.raises(ConfigError, match=re.escape(f"seed.yaml: fp16 and bf16 are both true: choose one "
                                                    f"(fp16: line 18, bf16: line {line})")):
        load_config(seed_path)


def test_every_unknown_key_is_reported_at_once(seed_path, capsys):
    """`lora_rnak` and `pref_betta` took two runs to find: one error per run."""
    seed_path.write_text(seed_path.read_text() + "lora_rnak: 8\npref_betta: 0.2\n")
    n = len(seed_path.read_text().splitlines())
    with pytest.raises(ConfigError) as err:
        load_config(seed_path, ["lerning_rate=1e-6"])
    assert str(err.value).splitlines() == [
        f"{seed_path}: unknown key 'lora_rnak' (did you mean 'lora_rank'?) (line {n - 1})",
        f"{seed_path}: unknown key 'pref_betta' (did you mean 'pref_beta'?) (line {n})",
        "command line: unknown key 'lerning_rate' (did you mean 'learning_rate'?)"]
    assert cli_main(["train", str(seed_path)]) == 2
    printed = capsys.readouterr().err
    assert "lora_rnak" in printed and "pref_betta" in printed
