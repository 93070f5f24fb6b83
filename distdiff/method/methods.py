"""The guidance methods by name: the one registry expand.py's --guidance reads (none: plain SD img2img; gif_sd: the
rival GIF-SD, distdiff/method/gif.py)."""

from __future__ import annotations

from distdiff.method.direct import DirectGuidance
from distdiff.method.gif import GifGuidance
from distdiff.method.guidance import Guidance
from distdiff.method.transform import TransformGuidance

GUIDANCE_METHODS: dict[str, type[Guidance]] = {cls.name: cls for cls in (TransformGuidance, DirectGuidance,
                                                                               GifGuidance)}
