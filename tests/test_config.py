"""One override parser for the trainer, the experiments runner and notebook 03: typed, checked, named errors."""
import pytest

from gclcore.config import TrainConfig, coerce_overrides, parse_overrides


def test_overrides_are_typed_like_the_fields():
    values = parse_overrides(["batch_size=64", "lr=1e-3", "progress=false", "stw=power:3", "eval_split=",
                              "direction=1"])
    assert values == {"batch_size": 64, "lr": 0.001, "progress": False, "stw": "power:3", "eval_split": "",
                      "direction": 1.0}
    assert type(values["batch_size"]) is int and type(values["direction"]) is float
    cfg = TrainConfig.from_dict(values)
    assert cfg.batch_size == 64 and cfg.progress is False and cfg.eval_split == ""


@pytest.mark.parametrize("item, message", [
    ("batch_size=2.5", "'batch_size' expects int, got '2.5'"),
    ("batch_size=many", "'batch_size' expects int"),
    ("progress=maybe", "'progress' expects bool"),
    ("lr=fast", "'lr' expects float"),
    ("bacth_size=64", "unknown config key"),
    ("batch_size", "expected KEY=VALUE"),
    ("learn_logit_scale=ture", "'learn_logit_scale' expects bool, got 'ture'"),
    ("epochs=ten", "'epochs' expects int, got 'ten'"),
])
def test_bad_overrides_name_the_key_and_the_expected_type(item, message):
    with pytest.raises(ValueError, match=message):
        parse_overrides([item])


@pytest.mark.parametrize("item, message", [
    ("lr=-1", "lr=-1.0: must be >= 0"),
    ("batch_size=0", "batch_size=0: must be >= 1"),
    ("epochs=-2", "epochs=-2: must be >= 0"),
    ("accum_freq=0", "accum_freq=0: must be >= 1"),
    ("warmup_steps=-5", "warmup_steps=-5: must be >= -1"),
    ("beta2=1", "beta2=1.0: must be in \\[0, 1\\)"),
    ("direction=1.5", "direction=1.5: must be in \\[0, 1\\]"),
    ("eps=0", "eps=0.0: must be > 0"),
    ("log_every=0", "log_every=0: must be >= 1"),
    ("eval_top_k=0", "eval_top_k=0: must be >= 1"),
    ("save_every=-2", "save_every=-2: must be >= -1"),
    ("freeze=heads", "freeze='heads': choose from auto, trunks, none"),
    ("precision=fp8", "precision='fp8': choose from auto, fp32, bf16, fp16"),
    ("duplicates=drop", "duplicates='drop': choose from negatives, mask, positives"),
    ("stw=lin", "stw='lin': unknown STW 'lin'"),
    ("stw=rank-exp:2", "stw='rank-exp:2': STW 'rank-exp:2': parameter out of range"),
    ("rhs_fields=title=x", "rhs_fields='title=x': bad field weight"),
    ("lhs_fields=", "lhs_fields='': need at least one field"),
])
def test_values_that_can_never_work_fail_when_the_config_is_made(item, message):
    """Before any model or data is loaded: the trainer's first act is making its config."""
    with pytest.raises(ValueError, match="invalid config: .*" + message):
        TrainConfig.from_dict(parse_overrides([item]))


def test_every_problem_is_named_at_once():
    with pytest.raises(ValueError) as caught:
        TrainConfig(lr=-1, batch_size=0, stw="nope")
    assert all(f"{key}=" in str(caught.value) for key in ("lr", "batch_size", "stw"))


def test_typed_values_from_yaml_and_papermill_are_checked_too():
    assert coerce_overrides({"epochs": 3.0, "tensorboard": True, "lr": 1})["lr"] == 1.0
    with pytest.raises(ValueError, match="'epochs' expects int, got True"):
        coerce_overrides({"epochs": True})
    with pytest.raises(ValueError, match="'tensorboard' expects bool, got 1"):
        coerce_overrides({"tensorboard": 1})


def test_yaml_config_with_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("batch_size: 32\nlr: 1e-3\nstw: constant\n")  # PyYAML reads 1e-3 as a string
    cfg = TrainConfig.from_yaml(path, **parse_overrides(["batch_size=16"]))
    assert (cfg.batch_size, cfg.lr, cfg.stw) == (16, 0.001, "constant")
    path.write_text("- not a mapping\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        TrainConfig.from_yaml(path)


def test_learning_rate_defaults_per_regime():
    from gclcore.config import REGIME_DEFAULTS

    heads, full = TrainConfig().resolved("trunks", 1000), TrainConfig().resolved("none", 20_000)
    assert (heads.freeze, heads.lr, heads.warmup_steps) == ("trunks", 1e-3, 20)
    assert (full.freeze, full.lr, full.warmup_steps) == ("none", 1e-5, 500)
    assert REGIME_DEFAULTS["none"].lr <= 5e-5  # the range open_clip users fine-tune CLIP with
    assert TrainConfig().resolved("none", 800).warmup_steps == 80  # at most a tenth of a short run
    assert TrainConfig().resolved("trunks", 50).warmup_steps == 20


@pytest.mark.parametrize("freeze", ["trunks", "none"])
def test_explicit_learning_rate_and_warmup_win(freeze):
    cfg = TrainConfig.from_dict(parse_overrides(["lr=3e-4", "warmup_steps=0"])).resolved(freeze, 10_000)
    assert (cfg.lr, cfg.warmup_steps) == (3e-4, 0)
    assert TrainConfig(warmup_steps=7).resolved(freeze, 10_000).warmup_steps == 7
    assert TrainConfig(lr=2e-6).resolved(freeze, 10_000).lr == 2e-6


def test_resolution_needs_a_resolved_regime():
    with pytest.raises(ValueError, match="'trunks' or 'none', not 'auto'"):
        TrainConfig().resolved("auto", 100)


def test_resume_conflicts_name_the_fields_that_define_another_run():
    import dataclasses

    saved = dataclasses.asdict(TrainConfig(stw="linear", lr=1e-3))
    assert TrainConfig(stw="linear", lr=1e-3, progress=False, max_steps=99, output_dir="elsewhere").resume_conflicts(
        saved) == []
    assert TrainConfig(stw="log", lr=1e-3).resume_conflicts(saved) == ["stw: 'linear' -> 'log'"]
    assert TrainConfig(lr=1e-3).resume_conflicts({"stw": "linear", "a_field_of_another_version": 1}) == []
