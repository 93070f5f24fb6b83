"""The rules every numeric expansion setting obeys, in one place.

expand.py's flag validation, EnergyGuidance and the sampler all check their settings here, so a
value is refused with the same message (naming the expand.py flag) wherever it enters. NaN and
inf are refused first: NaN passes every comparison, and inf turns the latents into NaN.
"""

from __future__ import annotations

import math

from distdiff.errors import UserError


class SettingError(UserError):
    """A setting value that cannot work; the message names the flag and what it must be."""


_AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
_NON_NEGATIVE = (lambda v: v >= 0, "0 or more")
# Setting (expand.py flag name) -> (test, what it must be).
RULES = {
    "num_images_per_prompt": _AT_LEAST_1, "steps": _AT_LEAST_1, "batch_size": _AT_LEAST_1,
    "total_split": _AT_LEAST_1, "K": _AT_LEAST_1, "guidance_period": _AT_LEAST_1, "guidance_step": _AT_LEAST_1,
    "max_source_images": _AT_LEAST_1, "num_threads": _AT_LEAST_1,
    "strength": (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "rho": _NON_NEGATIVE, "gs": _NON_NEGATIVE, "ls": _NON_NEGATIVE, "guidance_scale": _NON_NEGATIVE,
    "constraint_value": (lambda v: v > 0, "positive"),
    "resolution": (lambda v: v >= 8, "at least 8 pixels"),
}


def changed_settings(stored: dict, wanted: dict, *, defaults: dict | None = None) -> dict:
    """{key: (stored, wanted)} for every key of `wanted` that `stored` holds differently; a key `stored` lacks
    counts as its value in `defaults` (a setting added after `stored` was written), else None.

    The one rule for "resume only with the same settings" (expansion folders, training and tiny-SD states)."""
    defaults = defaults or {}
    return {k: (stored.get(k, defaults.get(k)), v) for k, v in wanted.items() if stored.get(k, defaults.get(k)) != v}


def check_settings(**values: float | int | None) -> None:
    """Raise SettingError for the first value that is not finite or breaks its RULES entry (None: unset, skipped)."""
    for name, value in values.items():
        valid, requirement = RULES[name]
        if value is None:
            continue
        if not math.isfinite(value):
            raise SettingError(f"--{name} must be a finite number, got {value}.")
        if not valid(value):
            raise SettingError(f"--{name} must be {requirement}, got {value}.")


def check_period(*, guidance_step: int, guidance_period: int) -> None:
    """The look-ahead of `guidance_period` steps must fit in the `guidance_step` steps left after T-M."""
    check_settings(guidance_step=guidance_step, guidance_period=guidance_period)
    if guidance_period > guidance_step:
        raise SettingError(f"--guidance_period ({guidance_period}) cannot exceed --guidance_step ({guidance_step}): "
                           f"the guidance period's look-ahead would run past the last step.")


def check_schedule(*, steps: int, guidance_step: int, guidance_period: int, start: int) -> None:
    """Guidance at schedule index T-M must fall inside the img2img steps [start, T) of `steps` T."""
    check_settings(steps=steps)
    if guidance_step > steps:
        raise SettingError(f"--guidance_step must be in [1, --steps={steps}], got {guidance_step}.")
    check_period(guidance_step=guidance_step, guidance_period=guidance_period)
    if steps - guidance_step < start:
        raise SettingError(f"--guidance_step {guidance_step} guides schedule index {steps - guidance_step}, before "
                           f"the first img2img step {start} (set by --strength); use --guidance_step <= "
                           f"{steps - start}, i.e. lower --guidance_step or raise --strength.")
