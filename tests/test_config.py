import pytest

from speedrun.config import (ConfigError, config_from_dict, load_config, parse_override, recipe_names,
                             to_toml)
from speedrun.config import tomllib


def test_bundled_recipes_load():
    names = recipe_names()
    assert {"addition", "addition-reference"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.recipe == name


def test_overrides_apply_with_types():
    cfg = load_config("addition", ["train.seed=3", "model.n_layer=3", "optim.lr=0.01", "device=cpu",
                                   "data.answer=plain"])
    assert cfg.train.seed == 3 and cfg.model.n_layer == 3 and cfg.optim.lr == 0.01
    assert cfg.device == "cpu" and cfg.data.answer == "plain"


def test_int_is_accepted_for_float():
    cfg = load_config("addition", ["optim.lr=1"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)


def test_unknown_key_names_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.sed'; did you mean 'train.seed'"):
        load_config("addition", ["train.sed=3"])


def test_unknown_section_names_closest():
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        load_config("addition", ["trian.seed=3"])


def test_wrong_type_names_expected_type():
    with pytest.raises(ConfigError, match="model.n_layer = 'two' has the wrong type; expected int"):
        load_config("addition", ["model.n_layer=two"])
    with pytest.raises(ConfigError, match="expected bool"):
        load_config("addition", ["train.compile=1"])


def test_bad_choice_lists_choices():
    with pytest.raises(ConfigError, match="expected one of 'plain', 'reversed'"):
        load_config("addition", ["data.answer=backwards"])


def test_unknown_recipe_lists_available():
    with pytest.raises(ConfigError, match="unknown recipe 'additon'.*did you mean 'addition'.*available: .*addition"):
        load_config("additon")


def test_missing_recipe_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/recipe.toml")


def test_override_without_equals():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.seed")


def test_invalid_shape_is_explained():
    with pytest.raises(ConfigError, match="divisible"):
        load_config("addition", ["model.n_embd=65"])


def test_recipe_from_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('task = "addition"\n[train]\nsteps = 7\n')
    cfg = load_config(str(path))
    assert cfg.recipe == "mine" and cfg.train.steps == 7


def test_a_recipe_extends_another_and_states_only_what_it_changes(tmp_path):
    long, short = load_config("shakespeare-bpe-long"), load_config("shakespeare-bpe")
    assert long.model.dropout == 0.1 and short.model.dropout == 0.0
    assert long.train.time_budget == 600 and long.train.batch_size == short.train.batch_size
    assert (long.model.n_embd, long.data.tokenizer, long.optim.muon_lr) == \
        (short.model.n_embd, short.data.tokenizer, short.optim.muon_lr)
    mine = tmp_path / "mine.toml"
    mine.write_text(f'extends = "{tmp_path / "parent.toml"}"\n[train]\nsteps = 9\n')
    (tmp_path / "parent.toml").write_text('extends = "addition"\n[train]\nsteps = 7\nbatch_size = 3\n')
    cfg = load_config(str(mine))
    assert cfg.recipe == "mine" and cfg.task == "addition" and (cfg.train.steps, cfg.train.batch_size) == (9, 3)
    (tmp_path / "parent.toml").write_text(f'extends = "{mine}"\n')
    with pytest.raises(ConfigError, match="without a cycle"):
        load_config(str(mine))
    (tmp_path / "sub").mkdir()  # a relative parent is read beside the recipe, not from the working folder
    (tmp_path / "sub" / "child.toml").write_text('extends = "../parent.toml"\n[train]\nsteps = 5\n')
    (tmp_path / "parent.toml").write_text('extends = "addition"\n[train]\nbatch_size = 3\n')
    cfg = load_config(str(tmp_path / "sub" / "child.toml"))
    assert (cfg.task, cfg.train.steps, cfg.train.batch_size) == ("addition", 5, 3)
    mine.write_text('extends = "shakespeare-bpe-lng"\n')
    with pytest.raises(ConfigError, match="did you mean 'shakespeare-bpe-long'"):
        load_config(str(mine))


def test_invalid_toml_is_a_config_error(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[train\nsteps = 7\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(path))


def test_toml_round_trip():
    cfg = load_config("addition", ["train.seed=5", 'description="a \\"quoted\\" text"'])
    again = config_from_dict(tomllib.loads(to_toml(cfg)))
    assert again == cfg


from hypothesis import given, settings
from hypothesis import strategies as st

from speedrun.config import Config


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), layers=st.integers(1, 64), lr=st.floats(1e-6, 10.0, allow_nan=False),
       compile_=st.booleans(), description=st.text(max_size=30))
def test_overrides_round_trip_through_toml(seed, layers, lr, compile_, description):
    cfg = load_config("addition", [f"train.seed={seed}", f"model.n_layer={layers}", f"optim.lr={lr!r}",
                                   f"train.compile={'true' if compile_ else 'false'}"])
    cfg.description = description
    assert (cfg.train.seed, cfg.model.n_layer, cfg.optim.lr, cfg.train.compile) == (seed, layers, lr, compile_)
    assert config_from_dict(tomllib.loads(to_toml(cfg))) == cfg


@settings(max_examples=60, deadline=None)
@given(key=st.from_regex(r"[a-z_]{1,12}", fullmatch=True))
def test_any_unknown_key_is_a_config_error(key):
    valid = {f.name for f in Config.__dataclass_fields__.values()}
    if key in valid:
        return
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config("addition", [f"{key}=1"])
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config("addition", [f"train.{key}x=1"])


def test_no_bundled_recipe_forces_bf16():
    """Recipes say dtype = "auto" (bf16 only where native) or leave it to the default."""
    from speedrun.config import read_recipe, recipe_names

    for name in recipe_names():
        assert read_recipe(name)[1].get("dtype", "auto") == "auto", name
        assert load_config(name).dtype == "auto", name


def test_float16_is_refused_with_what_to_use_instead():
    with pytest.raises(ConfigError, match="gradient scaler.*dtype=bfloat16"):
        load_config("shakespeare-char", ["dtype=float16"])


def test_patience_needs_whole_split_evaluations_to_count():
    assert load_config("chat-sft", ["train.patience=3"]).train.patience == 3
    with pytest.raises(ConfigError, match=r"train.patience = -1 .*give 0 \(off\) or a positive number"):
        load_config("shakespeare-char", ["train.patience=-1"])
    with pytest.raises(ConfigError, match="with train.eval_every above 0"):
        load_config("shakespeare-char", ["train.patience=2", "train.eval_every=0"])
    with pytest.raises(ConfigError, match="set data.eval_batches=0"):
        load_config("shakespeare-char", ["train.patience=2"])  # its periodic evaluations are sampled
    assert load_config("shakespeare-char", ["train.patience=2", "data.eval_batches=0"]).train.patience == 2
