"""The model card of a nodule localiser cross-validated on JSRT's real nodules (``data.kind: jsrt``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .modelcard import describe_calibration, scope_text, versions_section
from .modelcard_dense import _froc_row, _study_row

__all__ = ["write_real_nodule_card"]


def _ci(values: list[float]) -> str:
    return f"[{values[0]:.2f}, {values[1]:.2f}]"


def _band_rows(bands: dict[str, dict[str, Any]], unit: str) -> str:
    return "\n".join(f"| {name}{unit} | {b['n']} | {b['hits']} | {b['sensitivity']:.2f} {_ci(b['sensitivity_ci95'])} |"
                     for name, b in bands.items())


def _mean(metrics: dict[str, Any], key: str) -> float:
    folds = metrics.get("folds", [])
    return sum(f[key] for f in folds) / len(folds) if folds else float("nan")


def _simulated_versions_note(meta: dict[str, Any]) -> str:
    """Where the changelog reaches back to the 1.x models, say that their figures are simulated."""
    if not any(v.startswith("1.") for v in meta.get("changelog", {})):
        return ""
    return ("\nThe 1.x figures are on simulated nodules (insertion model B in held-out real backgrounds), not "
            "on real lesions; their record is `training/cxr-nodule-1.x.md`.\n")


def write_real_nodule_card(path: Path, meta: dict[str, Any]) -> None:
    sr = meta["secondreader"]
    (code, finding), = sr["findings"].items()
    prov = sr.get("provenance", {})
    metrics = sr["metrics"]
    test = metrics["test"]
    real = test["real_nodules"]
    at1, at_op = real["at_1_false_region_per_image"], real["at_operating_point"]
    data = sr["training"]["data"]
    rc = sr["training"]["real_nodules"]
    args = ", ".join(f"{k}={v}" for k, v in sr["network"]["args"].items())
    shape = sr["input"]["spatial_shape"]
    sal = sr["saliency"]
    mode = sr["mode"]
    fold_rows = "\n".join(
        f"| {f['background']} | {f['n']} | {f['auroc']:.3f} | {f['sensitivity']:.3f} | {f['specificity']:.3f} | "
        f"{f['froc_1']:.3f} |" for f in metrics.get("folds", []))
    review = metrics.get("nih_normal_review_rate")
    study = test["study"]
    review_text = (
        f"- JSRT normal films (cross-validation, each fold's operating point): "
        f"{1 - study['specificity']:.1%} routed to review ({study['n'] - study['n_positive']} films); false regions "
        "per normal "
        f"film {at_op['false_regions_per_normal_film']}\n"
        f"- JSRT nodule films: {study['sensitivity']:.1%} flagged ({study['n_positive']} films)\n")
    if review:
        review_text += (f"- NIH no-finding films of unseen patients (shipped model): {review['rate']:.1%} flagged "
                        f"{_ci(review['rate_ci95'])} ({review['flagged']} of {review['n']})\n")
    table = "\n".join(f"| {k} | {v} |" for k, v in [
        ("finding code", f"`{code}` ({finding['display_name']})"),
        ("network", f"MONAI `{sr['network']['class']}` ({args})"),
        ("input", f"1 x {shape[0]} x {shape[1]} ({data['mm_per_model_pixel']} mm per pixel on a JSRT film): "
                  f"{sr['input']['preprocessing']}"),
        ("heatmap", f"the sigmoid of the network's logits, smoothed (sigma {sal['smoothing_sigma']} px)"
                    + (", averaged with the mirror image's" if sal.get("flip_average") else "")),
        ("study score", f"{finding['study_score']}, calibrated by {describe_calibration(finding['calibration'])}"),
        ("operating point", f"calibrated probability >= {finding['operating_point']} "
                            f"({finding['operating_point_method']} on the validation fold)"),
        ("default mode", f"**{mode['default']}** ({mode['reason']})"),
        ("Device UID", f"`{sr['device_uid']}`"),
        ("weights", f"`models/model.pt` (sha256 `{sr['weights_sha256'][:16]}...`)"),
    ])
    text = f"""# Model card: {meta['name']} {meta['version']}

{meta['description']}

Its figures below come from **real nodules**: JSRT's {data['jsrt_nodules']} annotated lung nodules in
{data['jsrt_films']} real adult PA films, by {rc['folds']}-fold cross-validation. Simulated nodules
were used in training only (inserted into normal films) and in no figure here.

| | |
|---|---|
{table}

## Scope

{scope_text(sr.get('scope'))}

## Real nodules, cross-validated

{test['method']}. A detection is a peak of the map; it hits the nodule when it lies within the
nodule's radius (at least {sr['training']['lesions']['hit_radius_min']} model pixels) of its centre.
Intervals: 95% bootstrap over films (AUROC, FROC), Wilson (rates).

| test | films | AUROC [95% CI] | sensitivity [95% CI] | specificity [95% CI] | ECE |
|---|---|---|---|---|---|
{_study_row('JSRT, real nodules (pooled folds)', test)}

FROC: lesion sensitivity at 0.25 / 0.5 / 1 / 2 false regions per image [95% CI]:

| test | nodules | 0.25 | 0.5 | 1 | 2 |
|---|---|---|---|---|---|
{_froc_row('JSRT, real nodules (pooled folds)', test)}

At the operating point: lesion sensitivity {at_op['lesion_sensitivity']['sensitivity']:.2f}
{_ci(at_op['lesion_sensitivity']['sensitivity_ci95'])}, {at_op['false_regions_per_image']} false regions per image,
{at_op['false_regions_per_normal_film']} per normal film.

Sensitivity at 1 false region per image by JSRT subtlety (1 extremely subtle ... 5 obvious):

| subtlety | nodules | found | sensitivity [95% CI] |
|---|---|---|---|
{_band_rows(at1['by_subtlety'], '')}

By diameter:

| diameter | nodules | found | sensitivity [95% CI] |
|---|---|---|---|
{_band_rows(at1['by_diameter_mm'], ' mm')}

Per fold (each fold's own model and operating point; the pooled rows above compare every fold's
calibrated scores with one another, so a fold's poor calibration on its 32-34 validation films
lowers them; the mean over folds does not mix scales: study AUROC {_mean(metrics, 'auroc'):.3f},
FROC sensitivity at 1 false region per image {_mean(metrics, 'froc_1'):.3f}):

| fold | films | AUROC | sensitivity | specificity | FROC sens. @ 1 FP/image |
|---|---|---|---|---|---|
{fold_rows}

For scale: in JSRT's own observer study (Shiraishi et al., AJR 2000) radiologists reached an
Az of about 0.83 on these films.

## Review rates (what a site's radiologists would be asked to look at)

{review_text}
## Training data and licences

- JSRT database (Shiraishi et al., AJR 2000;174:71-74; free for research and education with
  citation; redistributed by NODE21), read in place from `../shared/data/jsrt`: {data['jsrt_films']} films,
  {data['jsrt_nodules']} with one real nodule, each film augmented {rc['copies']} times.
- NIH ChestX-ray14 (Wang et al., CVPR 2017; unrestricted use; NIH Clinical Center): {data['extra_normal_films']}
  no-finding films of the training patients of `../shared/data/nih-pneumonia`, as normal backgrounds,
  {rc['normal_copies']} pictures each; {rc['insert_fraction']:.0%} of normal pictures got simulated nodules
  (insertion model A) in their lungs.

{prov.get('data_source', '')}

## Intended use

{meta['intended_use']}

Not for: {prov.get('not_for', '')}

Reproduce: `{prov.get('reproduce', '')}`. The five fold fits took {sum(f['seconds'] for f in
metrics.get('folds', [])) / 60:.0f} min summed over the fits, two running at a time, one thread each, on
{sr['training'].get('machine', sr['training'].get('device', 'cpu'))}; the final fit about as long as one fold.
{versions_section(meta)}{_simulated_versions_note(meta)}"""
    path.write_text(text)
