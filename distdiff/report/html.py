"""The report's HTML page, made from report.json and the figures of distdiff/report/figures.py.

The page is one self-contained file: inline CSS, no scripts, no network, the PNG figures embedded
as base64 data URIs (a folder of figures inside OUT would look like a class folder to every
reader of OUT/<class>/). Every number on the page is formatted from the report dict by `fmt`, so
each one is also in report.json.
"""

from __future__ import annotations

import base64
import html
from string import Template
from typing import Sequence

from distdiff.method.records import STEP_KEYS
from distdiff.report import glance
from distdiff.report.figures import STAGES


def fmt(value) -> str:
    """How every number is shown: ints as is, floats to 4 significant digits, None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


PAGE = Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>$title</title>
<style>
body{font-family:sans-serif;margin:24px;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px}
th,td{border:1px solid #bbb;padding:3px 8px;text-align:right;font-size:13px}
th{background:#eee}td:first-child,th:first-child{text-align:left}
tr.yardstick td{background:#f4f4e8;font-style:italic}
.missing{color:#a33;font-weight:bold}
figure{display:inline-block;margin:6px 12px 12px 0}figcaption{font-size:12px}
section.glance{border:1px solid #c9cfe0;background:#f8f9fd;border-radius:6px;padding:4px 16px 10px;margin:0 0 20px}
section.glance h2{margin:10px 0 4px}section.glance h3{margin:12px 0 4px}
.glance-run{display:flex;gap:22px;align-items:flex-start;flex-wrap:wrap}
table.strip{margin:4px 0}table.strip th,table.strip td{border:none;padding:2px 4px;text-align:center;background:none}
table.strip td.cls{font-size:14px;font-weight:bold}table.strip img{display:block}
ul.verdicts{list-style:none;padding:0;margin:4px 0;flex:1;min-width:380px;font-size:15px;line-height:1.35}
ul.verdicts li{margin:0 0 10px;padding:4px 10px;border-left:5px solid #8a8}
ul.verdicts li.tone-warn{border-left-color:#d90}ul.verdicts li.tone-missing{border-left-color:#a33}
ul.verdicts li b{font-size:17px}ul.verdicts li.tone-missing b{color:#a33}ul.verdicts li b{display:block}
span.figures{display:block;font-size:16px}span.detail{display:block;font-size:14px;color:#444;margin-top:2px}
p.context{font-size:14px;margin:2px 0 6px}
</style></head><body>
<h1>$title</h1>
$body
</body></html>
""")


def _e(text) -> str:
    return html.escape(str(text))


def table(header: Sequence[str], rows: Sequence[Sequence[str]], classes: Sequence[str] = ()) -> str:
    """An HTML table; cells are already-escaped strings; `classes` gives a CSS class per row."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for k, row in enumerate(rows):
        css = f' class="{classes[k]}"' if k < len(classes) and classes[k] else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def missing(section: dict) -> str:
    """The line shown for a section the report could not compute."""
    return f'<p class="missing">missing: {_e(section.get("reason", "no data"))}</p>'


def _kid(entry: dict) -> str:
    return f"{fmt(entry['kid_mean'])} ± {fmt(entry['kid_std'])}"


def _summary(report: dict) -> str:
    real = report["real"]
    lines = [f"dataset <b>{_e(report['dataset'])}</b>; real train images (the expanded ones): {fmt(real['train']['n'])}; "
             f"held-out real images ({_e(real['heldout']['split'])} split): {fmt(real['heldout']['n'])}",
             f"guide checkpoint (feature space, label judge): {_e(report['guide_checkpoint'] or '—')}",
             f"report computed in {fmt(report['seconds'])} s"]
    rows = [[_e(r["name"]), fmt(r["images"]), fmt(r["sources"]), fmt(r["unmatched_images"]),
             fmt(r["manifest_records"]), _e(", ".join(f"{k}={v}" for k, v in r["config"].items()) or "—")]
            for r in report["runs"]]
    return ("<p>" + "<br>".join(lines) + "</p>" +
            table(["expansion", "synthetic images", "sources", "images without a train source",
                   "manifest records", "parameters"], rows))


def _distribution(section: dict, space: str, heldout: str) -> str:
    title = (f"<h2>Distribution distance: {_e(space)} features</h2>"
             f"<p><b>Feature space:</b> {_e(section.get('title', space))}</p>")
    if section.get("status") != "ok":
        return title + missing(section)
    rows = [[_e(r["set"]), _e(r["reference"]), fmt(r["overall"]["n_fake"]), fmt(r["overall"]["n_real"]),
             fmt(r["overall"]["fid"]), _kid(r["overall"]), fmt(r["overall"]["kid_subset_size"])]
            for r in section["rows"]]
    css = ["yardstick" if "yardstick" in r["set"] else "" for r in section["rows"]]
    text = ("<p>FID and KID (torchmetrics) of each set against a real reference; lower is closer. The yardstick "
            f"row, real train against real {_e(heldout)}, is what \"on distribution\" looks like at these sample "
            "sizes. KID is the mean ± std over random subsets of the size shown.</p>"
            + (f"<p>{fmt(section['dim'])}-d pooled features of images resized to {fmt(section['input_size'])} px; "
               f"weights: {_e(section['weights'])}.</p>" if "dim" in section else ""))
    out = title + text + table(["set", "reference", "n set", "n reference", "FID", "KID mean ± std",
                                "KID subset size"], rows, css)
    for reference in sorted({r["reference"] for r in section["rows"]}):
        chosen = [r for r in section["rows"] if r["reference"] == reference]
        classes = list(chosen[0]["per_class"]) if chosen else []
        per_class = [[_e(c)] + [f"{fmt(r['per_class'][c]['fid'])} / {_kid(r['per_class'][c])} "
                                f"(n {fmt(r['per_class'][c]['n_fake'])} vs {fmt(r['per_class'][c]['n_real'])})"
                                if c in r["per_class"] else "—" for r in chosen] for c in classes]
        out += (f"<details open><summary>per class, against real {_e(reference)}: FID / KID mean ± std (n set vs n "
                f"reference)</summary>" + table(["class"] + [r["set"] for r in chosen], per_class) + "</details>")
    return out


def _fidelity(section: dict) -> str:
    title = "<h2>Label fidelity</h2>"
    if section.get("status") == "missing":
        return title + missing(section)
    out = title + ("<p>Share of images a classifier assigns to their intended class. The held-out real row is the "
                   "classifier's accuracy on unseen real images, for reference: a synthetic set well below it has "
                   "lost its labels; one well above it is easier than real data, often because its images stay "
                   "close to the sources the classifier was trained on.</p>")
    for judge in ("guide", "judge"):
        if judge not in section:
            continue
        names = list(section[judge])
        classes = list(section[judge][names[0]]["per_class"])
        rows = [[_e(n if k < len(names) - 1 else f"real {n}"), fmt(section[judge][n]["overall"]["share"]),
                 fmt(section[judge][n]["overall"]["n"])] +
                [fmt(section[judge][n]["per_class"][c]["share"]) if c in section[judge][n]["per_class"] else "—"
                 for c in classes] for k, n in enumerate(names)]
        label = "the guide" if judge == "guide" else f"the judge {_e(section['judge_checkpoint'])}"
        out += f"<h3>judged by {label}</h3>" + table(["set", "overall", "n"] + [f"class {c}" for c in classes], rows,
                                                      [""] * (len(names) - 1) + ["yardstick"])
    return out


def _copying(section: dict) -> str:
    title = "<h2>Diversity and copying (guide features, Euclidean distance of unit-norm features)</h2>"
    if section.get("status") == "missing":
        return title + missing(section)
    rows, css, threshold = [], [], None
    for name, entry in section.items():
        threshold = entry.get("unchanged_distance", threshold)
        rows.append([_e(name), fmt(entry.get("sources")), fmt(entry.get("copy_to_source")),
                     fmt(entry.get("among_copies")), fmt(entry.get("unchanged_share"))])
        css.append("yardstick" if "yardstick" in name else "")
    text = ("<p>Per source image, the mean distance from each copy to its source and between its copies, averaged "
            f"over sources. A copy within {fmt(threshold)} of its source counts as unchanged: an expansion that "
            "returns its sources shows a copy-to-source distance near zero and an unchanged share near one. The yardstick row is the mean "
            "distance between two real train images of the same class.</p>")
    return title + text + table(["set", "sources", "copy to source", "among copies", "unchanged share"], rows, css)


def _img(images: dict[str, bytes], key: str, alt: str) -> str:
    data = base64.b64encode(images[key]).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _energies(report: dict, images: dict[str, bytes]) -> str:
    out = ("<h2>Energies from manifest.jsonl</h2><p>D_c / D_g: distance of each image's guide features to its class "
           "prototype / nearest group prototype, before guidance, right after the guided step, and of the final "
           "image. 'moved closer' is the share of images whose distance right after guidance is below the one "
           "before it; 'final closer' compares the final image with the one before guidance.</p>")
    guides = {r["name"]: r.get("guide_checkpoint") for r in report["runs"]}
    if len(set(guides.values())) > 1:  # energies in different feature spaces must not be read side by side
        out += ("<p class=\"missing\">These expansions were made with different guides, and each one's energies are "
                "measured in its own guide's features, so their energies cannot be compared across guides: "
                + "; ".join(f"{_e(name)}: {_e(guide or 'no guide')}" for name, guide in guides.items()) + ".</p>")
    rows = []
    for name, summary in report["energies"].items():
        for level in ("D_c", "D_g"):
            entry = summary.get(level, summary)
            if entry.get("status") != "ok":
                rows.append([_e(name), level, f'<span class="missing">missing: '
                             f'{_e(entry.get("reason", "not recorded"))}</span>', "", "", "", "", ""])
                continue
            rows.append([_e(name), level] + [fmt(entry[s].get("mean")) for s in STAGES] +
                        [fmt(entry["moved_closer_by_guidance"]), fmt(entry["final_closer_than_before"]),
                         fmt(entry["paired_n"])])
    out += table(["expansion", "energy", "mean before", "mean after", "mean final", "moved closer", "final closer",
                  "n"], rows)
    out += ("<p>The transform step (docs/METHOD.md#transform-guidance), means over images: the share of z_t's "
            "elements the transform pushed outside the eps ball (then clamped onto it), and the RMS distance the "
            "projected random scale/bias draw moves z_t and the gradient step then moves it further.</p>")
    step_rows = []
    for name, summary in report["energies"].items():
        step = summary.get("step", {"status": "missing"})
        if step.get("status") == "missing":
            step_rows.append([_e(name), '<span class="missing">missing: '
                              f'{_e(step.get("reason", "not recorded"))}</span>', "", "", ""])
            continue
        step_rows.append([_e(name)] + [fmt(step[k.value]["mean"]) if k.value in step else "" for k in STEP_KEYS] +
                         [fmt(max(v["n"] for v in step.values()))])
    out += table(["expansion", "eps saturated", "move: random draw", "move: gradient", "n"], step_rows)
    for name, entry in report["figures"].items():
        if "energies" in entry:
            out += f'<figure>{_img(images, entry["energies"], f"energy histograms of {name}")}</figure>'
    return out


def _sheets(report: dict, images: dict[str, bytes]) -> str:
    out = ("<h2>Contact sheets</h2><p>Per class, a fixed seeded sample of source images, one per row: the real "
           "source first, then a wider gap, then its synthetic copies. A comparison shows the same sources for "
           "every expansion.</p>")
    for name, entry in report["figures"].items():
        out += f"<h3>{_e(name)}</h3>"
        for cls, sheet in entry["contact_sheets"].items():
            out += (f'<figure>{_img(images, sheet["image"], f"contact sheet of class {cls}")}'
                    f'<figcaption>class {_e(cls)}</figcaption></figure>')
    return out


GLANCE_ORDER = ("label_fidelity", "distance", "copying")


def _strip(strip: dict | None, images: dict[str, bytes]) -> str:
    if not strip or not strip.get("classes"):
        return ('<p class="missing">No synthetic image is named after a train image (&lt;stem&gt;_expand_&lt;i&gt;.png), '
                'so no real image can be shown beside its synthetic copies.</p>')
    rows = ""
    for c in strip["classes"]:
        real = _img(images, c["real_image"], f"real train image {c['real_stem']} of class {c['class']}")
        synthetic = _img(images, c["synthetic_image"], f"synthetic images made from {c['real_stem']}")
        rows += f'<tr><td class="cls">{_e(c["class"])}</td><td>{real}</td><td>{synthetic}</td></tr>'
    return ('<table class="strip"><tr><th>class</th><th>real (train)</th><th>synthetic, made from it</th></tr>'
            f"{rows}</table>")


def glance_section(report: dict, images: dict[str, bytes]) -> str:
    """The first section: per expansion, real beside synthetic images and the three verdicts (distdiff/report/glance)."""
    summary = report.get("at_a_glance") or glance.summarise(report)
    real = report["real"]
    out = ('<section class="glance" id="at-a-glance"><h2>At a glance</h2>'
           f'<p class="context">Dataset {_e(report["dataset"])}. Each expansion is compared with the '
           f'{fmt(real["heldout"]["n"])} held-out real images of the {_e(real["heldout"]["split"])} split, which no step '
           f'of the expansion saw, and with the {fmt(real["train"]["n"])} real train images it was made from. The '
           "detailed measurements follow below.</p>")
    for run in report["runs"]:
        name = run["name"]
        verdicts = "".join(f'<li class="tone-{_e(v["tone"])}"><b>{_e(v["verdict"])}</b>'
                           + (f'<span class="figures">{_e(v["figures"])}</span>' if v.get("figures") else "")
                           + f'<span class="detail">{_e(v["text"])}</span></li>'
                           for v in (summary[name][key] for key in GLANCE_ORDER))
        heading = f"<h3>{_e(name)}</h3>" if len(report["runs"]) > 1 else ""
        out += (f'{heading}<p class="context">{fmt(run["images"])} synthetic images made from {fmt(run["sources"])} real '
                f'train images.</p><div class="glance-run">'
                f'{_strip(report.get("figures", {}).get(name, {}).get("glance_strip"), images)}'
                f'<ul class="verdicts">{verdicts}</ul></div>')
    return out + "</section>"


def render(report: dict, images: dict[str, bytes]) -> str:
    """The report page: its text and numbers from the report dict, its figures from `images` (PNG bytes by id)."""
    heldout = report["real"]["heldout"]["split"]
    body = glance_section(report, images) + "<h2>The expansions and the real images</h2>" + _summary(report)
    for space, section in report["distribution"].items():
        body += _distribution(section, space, heldout)
    body += _fidelity(report["label_fidelity"]) + _copying(report["copying"]) + _energies(report, images) + _sheets(report, images)
    names = ", ".join(r["name"] for r in report["runs"])
    return PAGE.substitute(title=_e(f"Expansion report: {names}"), body=body)
