"""distdiff.runs.recipe: expand_config.json is derived from the typed recipe, field by field, and guards resume."""

import dataclasses
import json
from enum import Enum

import pytest

import expand
from distdiff.jobs import expand_config
from distdiff.method.guidance import Guidance
from distdiff.runs.expansion import RUN_CONFIG, ExpansionError, ensure_run_config
from distdiff.runs.recipe import Recipe, RecipeError, recipe_defaults, recipe_params


@pytest.fixture(scope="module")
def make_recipe(tmp_path_factory):
    """The recipe expand.py makes from its flags, for digits with --model m and a guide file (resolve only checks
    that the guide exists; nothing here reads it)."""
    guide = tmp_path_factory.mktemp("guide") / "model_best.pth.tar"
    guide.touch()

    def make(*flags) -> Recipe:
        flags = ["-d", "digits", "--model", "m", "--guide_checkpoint", str(guide), *flags]
        return expand_config.resolve(expand.parse_config(flags)).recipe(resolution=32, dtype="float32")

    return make


def _leaves(obj, path=()):
    """(path of field names, field, value) of every leaf of a recipe: nested dataclasses and the guidance walked."""
    for item in dataclasses.fields(obj):
        value = getattr(obj, item.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, path + (item.name,))
        else:
            yield path + (item.name,), item, value


def _changed(value):
    """Another valid value of the same type."""
    if isinstance(value, Enum):
        return next(member for member in type(value) if member is not value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, tuple):
        return value + (0.5,)
    if value is None:  # an optional name (GIF-SD's CLIP model)
        return "other"
    return value + "_other"


def _replace(obj, path, value):
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    return dataclasses.replace(obj, **{path[0]: _replace(getattr(obj, path[0]), path[1:], value)})


GUIDANCES = [["--guidance", "transform"], ["--guidance", "direct"], ["--guidance", "none"], ["--guidance", "gif_sd"]]


@pytest.mark.parametrize("flags", GUIDANCES)
def test_every_field_of_the_recipe_reaches_expand_config_json(tmp_path, flags, make_recipe):
    recipe = make_recipe(*flags)
    ensure_run_config(tmp_path, recipe_params(recipe))
    stored = json.loads((tmp_path / RUN_CONFIG).read_text())
    leaves = list(_leaves(recipe))
    assert len(stored) == len(leaves) + (recipe.guidance is not None)  # + the method's name under "guidance"
    for path, item, value in leaves:
        key = item.metadata.get("param", item.name)
        expected = ("none" if path == ("guidance",) else value.value if isinstance(value, Enum) else
                    list(value) if isinstance(value, tuple) else value)  # JSON holds a tuple as a list
        assert stored[key] == expected, path
    assert stored["guidance"] == flags[1]


@pytest.mark.parametrize("flags", GUIDANCES)
def test_changing_any_field_refuses_to_resume_the_folder(tmp_path, flags, make_recipe):
    recipe = make_recipe(*flags)
    ensure_run_config(tmp_path, recipe_params(recipe))
    ensure_run_config(tmp_path, recipe_params(recipe))  # the same recipe resumes
    leaves = list(_leaves(recipe))
    assert len(leaves) >= 20
    for path, item, value in leaves:
        if path == ("guidance",):
            continue  # no guidance: another method is the change, below
        changed = _replace(recipe, path, _changed(value))
        key = item.metadata.get("param", item.name)
        with pytest.raises(ExpansionError, match=f"'{key}'"):
            ensure_run_config(tmp_path, recipe_params(changed))
    other = make_recipe("--guidance", "direct" if flags[1] != "direct" else "transform")
    with pytest.raises(ExpansionError, match="'guidance'"):
        ensure_run_config(tmp_path, recipe_params(other))


# expand_config.json as expand.py wrote it before the recipe existed (generation_params of commit fa34cbd, digits
# defaults, --model m): every key of both methods, whatever the method.
OLD_CONFIG = {"dataset": "digits", "model": "m", "resolution": 32, "crop": "center", "dtype": "float32",
              "strength": 0.5, "steps": 50, "guidance_scale": 7.5, "guidance": "transform", "guidance_step": 20,
              "guidance_period": 2, "rho": 10.0, "constraint_value": 0.2, "K": 3, "cluster": "kmeans", "gs": 1.0,
              "ls": 1.0, "optimize_targets": "global_prototype-local_prototype", "transform_feature_norm": True,
              "transform_init": "random", "transform_iters": 1, "transform_resolution": 1, "rho_schedule": "constant",
              "candidates": 1, "select": "energy", "raw_guide_input": False, "start_index": "diffusers", "seed": 42,
              "guide_checkpoint": None}


def _ensure(folder, recipe):
    ensure_run_config(folder, recipe_params(recipe), added_later=recipe_defaults(recipe))


@pytest.mark.parametrize("guidance", ["transform", "direct", "none"])
def test_a_folder_written_before_the_recipe_still_resumes(tmp_path, guidance, make_recipe):
    recipe = make_recipe("--guidance", guidance)
    old = {**OLD_CONFIG, "guidance": guidance, "guide_checkpoint": recipe.guide_checkpoint}  # this test's guide
    (tmp_path / RUN_CONFIG).write_text(json.dumps(old))
    _ensure(tmp_path, recipe)
    # older still: before --start_index, --candidates and the transform options existed (their defaults count)
    older = {k: v for k, v in old.items() if k not in ("candidates", "select", "transform_init", "start_index",
                                                        "transform_iters", "transform_resolution", "rho_schedule")}
    (tmp_path / RUN_CONFIG).write_text(json.dumps(older))
    _ensure(tmp_path, make_recipe("--guidance", guidance))
    if guidance != "none":  # an option set away from its default is not what the old folder was made with
        flag = ["--transform_iters", "2"] if guidance == "transform" else ["--rho_schedule", "linear"]
        with pytest.raises(ExpansionError, match="'transform_iters'" if guidance == "transform" else "'rho_schedule'"):
            _ensure(tmp_path, make_recipe("--guidance", guidance, *flag))
        with pytest.raises(ExpansionError, match="'rho'"):
            _ensure(tmp_path, make_recipe("--guidance", guidance, "--rho", "5"))


def test_the_defaults_an_old_folder_counts_are_each_options_own(make_recipe):
    defaults = recipe_defaults(make_recipe())
    assert {k: defaults[k] for k in ("start_index", "transform_init", "transform_iters", "transform_resolution",
                                     "candidates", "select")} == {
        "start_index": "diffusers", "transform_init": "random", "transform_iters": 1, "transform_resolution": 1,
        "candidates": 1, "select": "energy"}
    assert recipe_defaults(make_recipe("--guidance", "direct"))["rho_schedule"] == "constant"


def test_two_fields_recorded_under_one_key_are_refused(make_recipe):
    @dataclasses.dataclass(frozen=True)
    class Clashing(Guidance):
        name = "clash"
        size: int = dataclasses.field(default=3, metadata={"param": "resolution"})

    with pytest.raises(RecipeError, match="recorded as 'resolution'"):
        recipe_params(dataclasses.replace(make_recipe(), guidance=Clashing()))
