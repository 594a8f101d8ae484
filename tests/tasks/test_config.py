from typing import get_args, get_origin

import pytest
from pydantic import BaseModel
from repo import REPO_ROOT

from models.families.lookup import FAMILIES
from tasks.config import ConfigError, PipelineConfig, apply_override, load_config, spec_hash
from tasks.config.model_section import default_section

CONFIGS = REPO_ROOT / "configs"


def test_demo_yaml_spells_out_the_defaults():
    assert load_config(CONFIGS / "demo.yaml") == PipelineConfig()


def test_demo_is_three_six_twelve_by_stacking():
    specs = load_config(CONFIGS / "smoke.yaml").stage_specs()
    assert [s.model.n_layers for s in specs] == [3, 6, 12]
    assert [s.index for s in specs] == [1, 2, 3]
    assert all(s.growth.operator == "stack" for s in specs[1:])
    assert len({spec_hash(s) for s in specs}) == 3


def test_overrides_reach_lists_by_index_and_parse_yaml_values():
    cfg = load_config(
        CONFIGS / "smoke.yaml",
        ["stages.1.steps=0", "train.lr=1e-3", "registry.model_name=other", "stages.2.train.lr=5e-4"],
    )
    assert cfg.stages[1].steps == 0
    assert cfg.registry.model_name == "other"
    specs = cfg.stage_specs()
    assert [s.train.lr for s in specs] == [1e-3, 1e-3, 5e-4]
    assert [s.train.steps for s in specs] == [20, 0, 5]


def test_overrides_without_a_file_start_from_the_defaults():
    cfg = load_config(None, ["stages.0.steps=7"])
    assert cfg.stages[0].steps == 7 and len(cfg.stages) == 3


def test_apply_override_creates_missing_mappings():
    tree = {}
    apply_override(tree, "data.source=/x")
    assert tree == {"data": {"source": "/x"}}


BAD = [
    ("seed: [1\n", [], "is not valid YAML (line 2)"),
    ("- 1\n- 2\n", [], "must hold a mapping at the top level"),
    ("sead: 1\n", [], "sead: Extra inputs are not permitted"),
    ("seed: abc\n", [], "seed: Input should be a valid integer"),
    ("stages: []\n", [], "stages: List should have at least 1 item"),
    ("", ["stages.0.steps=-1"], "stages.0.steps: Input should be greater than or equal to 0"),
    ("", ["stages.0.n_layers=0"], "stages.0.n_layers: Input should be greater than or equal to 1"),
    ("", ["model.n_heads=3"], "n_heads=3 does not divide d_model=128"),
    ("", ["stages.1.n_layers=5"], "stages.1: cannot stack 3 layers into 5"),
    ("", ["stages.1.growth.operator=grow"], "stages.1.growth.operator: Input should be 'stack'"),
    ("", ["stages.0.train.lrr=1"], "stages.0.train.lrr: Extra inputs are not permitted"),
    ("", ["train.steps=5"], "set steps per stage"),
    ("", ["stages.9.steps=1"], "stages has no item '9' (it has 3)"),
    ("", ["steps"], "is not of the form dotted.key=value"),
    ("", ["stages.0.steps=1000000000000000000000"], "stages.0.steps: Input should be less than or equal to 1000000000"),
    ("", ["stages.1.steps=null", "stages.1.until.tokens=1000000000001"], "stages.1.until.tokens: Input should be less"),
    ("", ["stages.1.steps=null", "stages.1.until.loss_slope={threshold: 0.1, max_steps: 2000000000}"], "max_steps"),
    (
        "",
        ["stages.1.steps=null", "stages.1.until.tokens=1000000000000", "train.batch_size=2", "model.context=64"],
        "stages.1: until.tokens 1000000000000 is 7812500000 steps of 128 tokens (batch x context), over 1000000000",
    ),
    ("", ["registry.model_name=bad name!"], "registry.model_name: String should match pattern"),
    ("", ["seed=1", "seed.x=1"], "seed is not a mapping or a list"),
    ("", ["seed.x=1"], "seed: Input should be a valid integer"),
]


@pytest.mark.parametrize("text, overrides, message", BAD)
def test_user_mistakes_are_one_line_config_errors(tmp_path, text, overrides, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path if text else None, overrides)  # no text: the defaults, no file
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file 'nope.yaml' not found"):
        load_config("nope.yaml")


@pytest.mark.parametrize("text", ["", "\n\n", "# a pipeline, some day\n  # indented too\n", "---\n", "~\n"])
def test_an_empty_file_is_refused_not_run_as_the_defaults(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="config file is empty: '.*c.yaml'"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file is empty"):
        load_config(path, ["stages.0.steps=7"])  # an override does not make it a pipeline


def test_the_largest_budgets_are_accepted():
    cfg = load_config(None, ["stages.0.steps=1000000000", "stages.1.steps=null", "stages.1.until.tokens=1000000000000"])
    assert cfg.stages[0].steps == 10**9 and cfg.stages[1].until.tokens == 10**12


def _floats(annotation, key: str):
    """The dotted keys of the float fields under ``annotation`` (``*``: any list item or mapping key)."""
    if annotation is float:
        yield key
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for name, field in annotation.model_fields.items():
            yield from _floats(field.annotation, f"{key}.{name}" if key else name)
    elif get_origin(annotation) in (dict, list):
        yield from _floats(get_args(annotation)[-1], f"{key}.*")
    else:  # a union, an optional, an annotated type: each of its members
        for arg in get_args(annotation):
            yield from _floats(arg, key)


FLOAT_KEYS = sorted(set(_floats(PipelineConfig, "")))


def _reach(key: str) -> tuple[str, str]:
    """A shipped config in which ``key`` takes effect, and the override that sets it (with what it needs)."""
    if key.startswith("model."):  # the default family's demo, or the first family's demo config that has it
        field = key.split(".")[1]
        if field in default_section().model_fields:
            return "demo.yaml", key
        demos = (f"{n}-demo.yaml" for n, f in FAMILIES.items() if field in f.config.model_fields)
        return next(d for d in demos if (CONFIGS / d).exists()), key
    mixture = "data.sources" in key or "data.weights" in key
    override = (
        key.replace("stages.*", "stages.1").replace("sources.*", "sources.0").replace("weights.*", "weights.code")
    )
    if ".until.loss_slope." in key:  # a stage ends by its loss slope instead of a step count
        override = f"stages.1.steps=null;stages.1.until.loss_slope.max_steps=10;{override}"
    return ("mixture-demo.yaml" if mixture else "smoke.yaml"), override


def test_every_float_key_is_found():
    assert {"train.lr", "retry.delay_s", "gate.margin", "stages.*.growth.noise", "stages.*.train.lr"} <= set(FLOAT_KEYS)
    assert "data.sources.*.weight" in FLOAT_KEYS and "stages.*.data.weights.*" in FLOAT_KEYS


@pytest.mark.parametrize("value", ["inf", "-.inf", "nan"])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_every_float_key_refuses_non_finite_values_in_one_line(key, value):
    config, overrides = _reach(key)
    *needs, override = overrides.split(";")
    load_config(CONFIGS / config, [*needs, f"{override}=1e-3"])  # the key exists there, and a finite value is taken
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / config, [*needs, f"{override}={value}"])
    message, field = str(e.value), override.rsplit(".", 1)[1]
    assert "\n" not in message and message.startswith("invalid config: "), message
    assert f".{field}: Input should be" in message, message


def test_approvals_and_system_metrics_change_no_key_and_no_pipeline_hash():
    """Asking a person, or watching the machine, changes nothing a stage computes: every stage key and the pipeline's
    name stay those of the same config without them (a rerun with them on skips what is registered)."""
    from tasks.config import pipeline_hash, stage_key

    smoke = CONFIGS / "smoke.yaml"
    plain = load_config(smoke)
    watched = load_config(smoke, ["train.system_metrics=true", "stages.1.approve=true", "stages.1.approve_timeout_s=5"])
    assert watched.stage_specs()[0].system_metrics and not plain.stage_specs()[0].system_metrics
    assert pipeline_hash(watched) == pipeline_hash(plain)
    assert [stage_key(s, "p") for s in watched.stage_specs()] == [stage_key(s, "p") for s in plain.stage_specs()]
