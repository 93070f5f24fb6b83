"""The report's first screen, "At a glance": per expansion, three verdicts in plain words, each number beside its
yardstick.

- label fidelity: the share of synthetic images a classifier assigns to their intended class, beside the same
  classifier's accuracy on real held-out images;
- distance to held-out real images in an independent feature space (one the guidance never saw): FID of the
  synthetic images against the held-out split, beside FID of the real train images against the same split, read
  as a ratio;
- copying: the distance from a copy to its source, beside the distance between two different real train images
  of the same class.

Everything here is a pure function of the report dict (report.json), so a hand-made dict can be checked and an old
report.json re-rendered. A piece the report could not measure gets a sentence saying so and why, never a blank or
a made-up number. Numbers in the sentences are rounded to 2-3 significant digits; the exact values are in the
tables below the first screen and in report.json.
"""

from __future__ import annotations

import math

# --- Thresholds for the words. Each is a ratio or difference of a number to its yardstick. ----------------------

# Label fidelity: synthetic share vs the classifier's accuracy on real held-out images, in absolute share.
# Within 5 percentage points reads "about as often as on real images": at the few hundred images per set a report
# measures, one share's binomial standard error is about 2 points (sqrt(0.9 * 0.1 / 200) = 0.021), so two shares
# closer than ~5 points (about 2 standard errors of their difference) are not told apart.
LABEL_SAME_SHARE = 0.05

# Distance: FID(synthetic, held-out) / FID(real train, held-out). Up to 1.25x reads "about as close to test as the
# real train images are": FID of a few hundred images is biased upward by an amount that falls like 1/n and moves by
# tens of percent between draws of that size, so a smaller ratio is not a difference one can read. Below 1 / 1.25
# the synthetic images are closer to test than real train images are, which is said as such.
DISTANCE_SAME_RATIO = 1.25
# A synthetic set under half the size of real train has a visibly larger small-sample FID bias; the sentence says so.
SMALLER_SET_FACTOR = 0.5

# Copying: mean copy-to-source distance / mean distance between two different real train images of the same class
# (both in the guide's unit-norm features). Below 0.5 a copy is nearer its source than half the gap between two real
# images of its class: a variant of that image ("copies stay close to their sources"). From 0.8 on a copy differs
# from its source nearly as much as another real image of the class does: a new image ("copies are far from their
# sources"). In between they move part of the way.
COPY_CLOSE_RATIO = 0.5
COPY_FAR_RATIO = 0.8

# The independent feature spaces the distance verdict reads, in order of preference (distdiff/report/feature_spaces):
# EfficientNet-Lite0 is measured by default; InceptionV3 only with a local weights file.
GLANCE_SPACES = ("efficientnet_lite0", "inception")
YARDSTICK_SET = "real train (yardstick)"  # the distribution rows' yardstick (build._distribution)
COPY_YARDSTICK = "real train, same class (yardstick)"  # the copying section's yardstick (build._guide_sections)

OK, WORSE, MISSING = "ok", "warn", "missing"  # a verdict's tone: the colour of its mark on the page (CSS tone-*)


def significant(value: float, digits: int = 3) -> str:
    """`value` rounded to `digits` significant digits, plain notation, no trailing zeros: 1234 -> '1230',
    0.04567 -> '0.0457', 4.0 -> '4'."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    exponent = math.floor(math.log10(abs(value)))
    rounded = round(value, digits - 1 - exponent)
    decimals = max(0, digits - 1 - exponent)
    text = f"{rounded:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def percent(share: float) -> str:
    """A share in [0, 1] as a percentage to 3 significant digits: 0.9125 -> '91.2%', 1.0 -> '100%'."""
    return f"{significant(share * 100, 3)}%"


def times(ratio: float) -> str:
    """A ratio to 2 significant digits: 4.0 -> '4x', 4.37 -> '4.4x', 12.3 -> '12x'."""
    return f"{significant(ratio, 2)}x"


def _missing(topic: str, text: str) -> dict:
    return {"status": "missing", "tone": MISSING, "verdict": f"{topic}: not measured", "text": text}


def _guided(run: dict) -> bool:
    """Did the guidance steer this run toward the guide classifier (anything but plain img2img)?"""
    return run.get("config", {}).get("guidance", "transform") != "none"


# --- label fidelity ---------------------------------------------------------------------------------------------


def _label_words(share: float, real: float) -> tuple[str, str]:
    if abs(share - real) <= LABEL_SAME_SHARE:
        return "kept about as well as on real images", OK
    if share < real:
        return "recognised less often than real images", WORSE
    return "recognised more often than real images", OK


def label_fidelity(report: dict, run: dict) -> dict:
    """Verdict on labels: the judge's (independent) when there is one, else the guide's."""
    topic = "Labels"
    section = report.get("label_fidelity", {})
    heldout = report["real"]["heldout"]["split"]
    if section.get("status") == "missing":
        return _missing(topic, f"No classifier judged the labels: {section.get('reason', 'no data')}.")
    name = run["name"]
    judges = [j for j in ("judge", "guide") if name in section.get(j, {}) and heldout in section.get(j, {})]
    if not judges:
        return _missing(topic, f"The report holds no label fidelity of {name} and of the real {heldout} images.")
    entry = {"status": "ok"}
    sentences = []
    for judge in judges:
        share = section[judge][name]["overall"]["share"]
        real = section[judge][heldout]["overall"]["share"]
        entry[judge] = {"share": share, "real_heldout_share": real, "n": section[judge][name]["overall"]["n"]}
        who = "The independent judge (--judge_checkpoint)" if judge == "judge" else "The guide classifier"
        sentences.append(f"{who} assigns {percent(share)} of the synthetic images to their intended class; on real "
                         f"held-out {heldout} images it is right {percent(real)} of the time.")
    lead = judges[0]  # the judge's verdict when there is one: the guidance never saw it
    share, real = entry[lead]["share"], entry[lead]["real_heldout_share"]
    words, tone = _label_words(share, real)
    if share > real + LABEL_SAME_SHARE:
        sentences.append("Images easier to label than real ones often stay close to the train images the classifier "
                         "learned from.")
    if "judge" not in judges:
        sentences.append("No independent judge was given (--judge_checkpoint)"
                         + ("; the guidance steered these images toward this classifier, so its verdict is not "
                            "independent." if _guided(run) else "."))
    return entry | {"tone": tone, "verdict": f"{topic}: {words}", "judged_by": lead, "text": " ".join(sentences),
                    "figures": f"{percent(share)} vs {percent(real)} on real {heldout} images"}


# --- distance to held-out real images ---------------------------------------------------------------------------


def _space(report: dict) -> tuple[str | None, dict | None]:
    """The first measured independent space, else (None, the preferred space's section, which says why not)."""
    spaces = report.get("distribution", {})
    for name in GLANCE_SPACES:
        if spaces.get(name, {}).get("status") == "ok":
            return name, spaces[name]
    return None, spaces.get(GLANCE_SPACES[0])


def _distance_words(ratio: float) -> tuple[str, str]:
    if ratio > DISTANCE_SAME_RATIO:
        return f"{times(ratio)} further than the real train images are", WORSE
    if ratio < 1 / DISTANCE_SAME_RATIO:
        return f"closer than the real train images are ({times(ratio)} their distance)", OK
    return "about as close as the real train images are", OK


def distance(report: dict, run: dict) -> dict:
    """Verdict on FID to the held-out images in an independent space, as a ratio to real train's FID to them."""
    heldout = report["real"]["heldout"]["split"]
    topic = f"Distance to real {heldout} images"
    name, section = _space(report)
    if name is None:
        reason = (section or {}).get("reason", "no independent feature space in this report")
        guide_space = report.get("distribution", {}).get("guide", {}).get("status") == "ok"
        return _missing(topic, f"No feature space independent of the guide was measured: {reason}. So this report "
                               f"cannot say how close the images are to held-out real ones"
                        + ("; the guide's own space (tables below) is the one the guidance optimises, no neutral "
                           "ruler." if guide_space else "."))
    rows = {(r["set"], r["reference"]): r["overall"] for r in section["rows"]}
    yard, own = rows.get((YARDSTICK_SET, heldout)), rows.get((run["name"], heldout))
    title = section.get("title", name)
    if own is None or own.get("fid") is None or yard is None or yard.get("fid") is None:
        why = (own or {}).get("note") or (yard or {}).get("note") or "no FID in the report"
        return _missing(topic, f"FID in {title} features could not be computed ({why}).") | {"space": name}
    fid, yard_fid = own["fid"], yard["fid"]
    entry = {"status": "ok", "space": name, "fid": fid, "yardstick_fid": yard_fid, "n": own["n_fake"],
             "n_real_train": yard["n_fake"], "n_heldout": own["n_real"]}
    detail = (f"In {title} features: FID {significant(fid)} between the synthetic images and the "
              f"{own['n_real']} held-out {heldout} images, against {significant(yard_fid)} between the "
              f"{yard['n_fake']} real train images and the same {heldout} images (lower is closer).")
    if own["n_fake"] < SMALLER_SET_FACTOR * yard["n_fake"]:
        detail += (f" The synthetic set is smaller ({own['n_fake']} vs {yard['n_fake']} images) and FID rises as a "
                   f"set shrinks, so part of the gap is sample size.")
    if yard_fid <= 0:
        return entry | {"status": "missing", "tone": MISSING, "verdict": f"{topic}: no ratio",
                        "text": detail + " The real train images are at FID 0 from the held-out ones, so no ratio "
                                         "can be formed."}
    ratio = fid / yard_fid
    words, tone = _distance_words(ratio)
    return entry | {"ratio": ratio, "tone": tone, "verdict": f"{topic}: {words}", "text": detail,
                    "figures": f"FID {significant(fid)} vs {significant(yard_fid)} for real train images"}


# --- copying ----------------------------------------------------------------------------------------------------


def _copy_words(ratio: float) -> tuple[str, str]:
    if ratio < COPY_CLOSE_RATIO:
        return "copies stay close to their sources", WORSE
    if ratio >= COPY_FAR_RATIO:
        return "copies are far from their sources, new images rather than variants", OK
    return "copies move part of the way from their sources", OK


def copying(report: dict, run: dict) -> dict:
    """Verdict on copy-to-source distance, as a ratio to the distance between two real images of one class."""
    topic = "Copying"
    section = report.get("copying", {})
    if section.get("status") == "missing":
        return _missing(topic, f"Copying is measured in the guide's features and there are none: "
                               f"{section.get('reason', 'no data')}.")
    own, yard = section.get(run["name"], {}), section.get(COPY_YARDSTICK, {})
    if own.get("status") == "missing" or own.get("copy_to_source") is None:
        return _missing(topic, f"{own.get('reason', 'no copy-to-source distance in the report')}.")
    if not yard.get("among_copies"):
        return _missing(topic, "No distance between real train images of one class to compare with (classes of a "
                               "single image).")
    distance_, yard_distance = own["copy_to_source"], yard["among_copies"]
    ratio = distance_ / yard_distance
    words, tone = _copy_words(ratio)
    text = (f"In the guide's features, a copy lies on average {significant(distance_)} from its source, while two "
            f"different real train images of the same class lie {significant(yard_distance)} apart "
            f"({times(ratio)} that gap).")
    unchanged = own.get("unchanged_share") or 0
    if unchanged > 0:
        text += f" {percent(unchanged)} of the copies are their source returned unchanged."
    return {"status": "ok", "copy_to_source": distance_, "yardstick": yard_distance, "ratio": ratio,
            "unchanged_share": unchanged, "tone": tone, "verdict": f"{topic}: {words}", "text": text,
            "figures": f"{significant(distance_)} from source vs {significant(yard_distance)} between two real images of "
                       f"a class"}


def summarise(report: dict) -> dict:
    """{run name: {"label_fidelity", "distance", "copying"}}: each a verdict ("status", "tone", "verdict": the words,
    "figures": the number beside its yardstick, "text": the sentences saying what was measured) and its numbers."""
    return {run["name"]: {"label_fidelity": label_fidelity(report, run), "distance": distance(report, run),
                          "copying": copying(report, run)} for run in report["runs"]}
