"""The rules numeric settings obey, in one place.

expand.py's own flags and the sampler's settings are checked by `check_settings` (messages name the
expand.py flag); a guidance method checks its own options once, in its constructor, by
`check_option` (messages in the library's terms, an OptionError the scripts render with their
flags). NaN and inf are refused first: NaN passes every comparison, and inf turns the latents into NaN.
"""

from __future__ import annotations

import math
from typing import Callable

from distdiff.errors import UserError


class SettingError(UserError):
    """A setting value that cannot work; the message names the flag and what it must be."""


AT_LEAST_1 = (lambda v: v >= 1, "at least 1")
NON_NEGATIVE = (lambda v: v >= 0, "0 or more")
POSITIVE = (lambda v: v > 0, "positive")
# Setting (its script flag: expand.py's, and train_expand.py's synthetic_probability) -> (test, what it must be).
RULES = {
    "num_images_per_prompt": AT_LEAST_1, "steps": AT_LEAST_1, "batch_size": AT_LEAST_1,
    "total_split": AT_LEAST_1, "K": AT_LEAST_1, "max_source_images": AT_LEAST_1, "num_threads": AT_LEAST_1,
    "strength": (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "gs": NON_NEGATIVE, "ls": NON_NEGATIVE, "guidance_scale": NON_NEGATIVE, "candidates": AT_LEAST_1,
    "resolution": (lambda v: v >= 8, "at least 8 pixels"),
    "synthetic_probability": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
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


class OptionError(UserError):
    """A method's option that cannot work, said in the library's terms: "TransformGuidance: rho must be ...".

    The message is a template whose {fields} name options, so a script can say the same with its flags
    (`render(flags)`); `options` are the names the template uses, the first the option at fault.
    """

    def __init__(self, owner: str, template: str, *options: str):
        self.owner, self.template, self.options = owner, template, options
        super().__init__(f"{owner}: " + self.render({name: name for name in options}))

    def render(self, names: dict[str, str]) -> str:
        """The message with each option called by `names[option]` (e.g. its command-line flag)."""
        return self.template.format(**{name: names.get(name, name) for name in self.options})


def check_option(owner: str, name: str, value: float | int, requirement: tuple[Callable, str]) -> None:
    """Raise OptionError unless `value` of option `name` of `owner` is finite and meets `requirement` (a RULES entry)."""
    valid, text = requirement
    if not math.isfinite(value):
        raise OptionError(owner, f"{{{name}}} must be a finite number, got {value}.", name)
    if not valid(value):
        raise OptionError(owner, f"{{{name}}} must be {text}, got {value}.", name)
