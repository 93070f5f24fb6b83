"""Tests for distdiff.utils.settings: one rule per setting, the same message wherever the value enters."""

import math

import pytest

import expand
from distdiff.jobs import expand_config
from distdiff.method.direct import DirectGuidance
from distdiff.method.transform import TransformGuidance
from distdiff.pipelines.sampling import img2img_start_index
from distdiff.utils.settings import RULES, OptionError, SettingError, check_settings


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_setting_refuses_nan_and_inf(name, value):
    with pytest.raises(SettingError, match=f"^--{name} must be a finite number, got {value}.$"):
        check_settings(**{name: value})


def _validate(*flags):
    expand_config.resolve(expand.parse_config(["-d", "digits", *flags]))


def test_a_method_says_its_options_in_its_terms_and_expand_py_in_its_flags():
    with pytest.raises(OptionError, match=r"^TransformGuidance: rho must be a finite number, got nan\.$"):
        TransformGuidance(rho=math.nan)
    with pytest.raises(SettingError, match=r"^--rho must be a finite number, got nan\.$"):
        _validate("--rho", "nan")
    with pytest.raises(OptionError, match=r"^TransformGuidance: eps must be positive, got 0.0\.$"):
        TransformGuidance(eps=0.0)
    with pytest.raises(SettingError, match=r"^--constraint_value must be positive, got 0.0\.$"):
        _validate("--constraint_value", "0")
    with pytest.raises(SettingError, match=r"^--strength must be in \(0, 1\], got 1.5\.$"):
        img2img_start_index(50, 1.5)
    check_settings(strength=1.0, resolution=None)  # boundaries and unset values pass
    TransformGuidance(rho=0.0)


def test_the_schedule_rules_name_the_fix():
    DirectGuidance(guidance_step=25, period=2).check_schedule(steps=50, start=25)
    with pytest.raises(OptionError, match=r"use guidance_step <= 25, i.e. lower guidance_step or raise strength"):
        DirectGuidance(guidance_step=26, period=2).check_schedule(steps=50, start=25)
    with pytest.raises(SettingError, match=r"use --guidance_step <= 25, i.e. lower --guidance_step or raise --strength"):
        _validate("--steps", "50", "--strength", "0.5", "--guidance_step", "26")
    with pytest.raises(SettingError, match=r"^--guidance_step must be in \[1, --steps=50\], got 51\.$"):
        _validate("--steps", "50", "--guidance_step", "51")
    with pytest.raises(SettingError, match=r"^--guidance_period \(3\) cannot exceed --guidance_step \(2\)"):
        _validate("--guidance_step", "2", "--guidance_period", "3")
