"""Tests for distdiff.utils.settings: one rule per setting, the same message wherever the value enters."""

import math

import pytest

from distdiff.method.guidance import EnergyGuidance
from distdiff.pipelines.sampling import img2img_start_index
from distdiff.utils.settings import RULES, SettingError, check_schedule, check_settings


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_setting_refuses_nan_and_inf(name, value):
    with pytest.raises(SettingError, match=f"^--{name} must be a finite number, got {value}.$"):
        check_settings(**{name: value})


def test_the_library_and_the_flags_share_one_message():
    with pytest.raises(SettingError, match=r"^--rho must be a finite number, got nan\.$"):
        EnergyGuidance(rho=math.nan)
    with pytest.raises(SettingError, match=r"^--constraint_value must be positive, got 0.0\.$"):
        EnergyGuidance(eps=0.0)
    with pytest.raises(SettingError, match=r"^--strength must be in \(0, 1\], got 1.5\.$"):
        img2img_start_index(50, 1.5)
    check_settings(rho=0.0, strength=1.0, resolution=None)  # boundaries and unset values pass


def test_the_schedule_rules_name_the_fix():
    check_schedule(steps=50, guidance_step=25, guidance_period=2, start=25)
    with pytest.raises(SettingError, match=r"use --guidance_step <= 25, i.e. lower --guidance_step or raise"):
        check_schedule(steps=50, guidance_step=26, guidance_period=2, start=25)
    with pytest.raises(SettingError, match=r"^--guidance_step must be in \[1, --steps=50\], got 51\.$"):
        check_schedule(steps=50, guidance_step=51, guidance_period=2, start=0)
    with pytest.raises(SettingError, match=r"^--guidance_period \(3\) cannot exceed --guidance_step \(2\)"):
        check_schedule(steps=50, guidance_step=2, guidance_period=3, start=0)
