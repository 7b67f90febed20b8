"""The human-readable model card (``docs/README.md``) written from a bundle's metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["scope_text", "versions_section", "with_interval", "write_model_card"]


def with_interval(m: dict[str, Any], key: str, digits: int = 4) -> str:
    """``m[key]`` and, where the metrics hold one (``key_ci95``), its 95% interval."""
    ci = m.get(f"{key}_ci95")
    value = f"{m[key]:.{digits}f}"
    return f"{value} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else value


def _row(split: str, m: dict[str, Any]) -> str:
    cells = " | ".join(with_interval(m, key) for key in ("auroc", "accuracy", "sensitivity", "specificity"))
    return f"| {split} | {m['n']} ({m['n_positive']} positive) | {cells} | {m['ece']:.4f} |"


def write_model_card(path: Path, meta: dict[str, Any]) -> None:
    sr = meta["secondreader"]
    (code, finding), = sr["findings"].items()
    prov = sr.get("provenance", {})
    metrics = sr["metrics"]
    cal = finding["calibration"]
    op = f"{finding['operating_point']} ({finding['operating_point_method']} on validation)"
    text = f"""# Model card: {meta['name']} {meta['version']}

{meta['description']}

| | |
|---|---|
| finding code | `{code}` ({finding['display_name']}) |
| network | MONAI `{sr['network']['class']}` ({', '.join(f'{k}={v}' for k, v in sr['network']['args'].items())}) |
| input | 1 x {sr['input']['spatial_shape'][0]} x {sr['input']['spatial_shape'][1]}: {sr['input']['preprocessing']} |
| calibration | {describe_calibration(cal)}, fitted on the validation split |
| operating point | calibrated probability >= {op} |
| urgent point | calibrated probability >= {finding['urgent_point']} ({finding['urgent_point_method']}) |
| Device UID | `{sr['device_uid']}` (changes with every version) |
| weights | `models/model.pt`, a state dict (sha256 `{sr['weights_sha256'][:16]}...`), loaded with `weights_only=True` |

## Performance

Measured by `secondreader evaluate models/{meta['name']} --data {prov.get('data_path', '<npz>')}` on the
untouched test split (used once, after calibration and the operating point were fixed on validation).
AUROC with a 95% percentile-bootstrap interval (2,000 resamples); accuracy, sensitivity and specificity
at the operating point, each with its Wilson 95% interval; expected calibration error over 10 bins.

| split | images | AUROC [95% CI] | accuracy [95% CI] | sensitivity [95% CI] | specificity [95% CI] | ECE |
|---|---|---|---|---|---|---|
{_row('validation', metrics['validation'])}
{_row('test', metrics['test'])}

Calibration: `reliability.png` beside this card (observed frequency against predicted probability,
validation and test).

{_extra_rows(metrics)}
{prov.get('anchors', _MEDMNIST_ANCHORS)}

## Scope and mode

{scope_text(sr.get('scope'))}

Default mode: **{sr.get('mode', {}).get('default', 'live')}** ({sr.get('mode', {}).get('reason', 'no targets set')}).

## Training data and licence

{prov.get('data_source', '')}

## Intended use

{meta['intended_use']}

## What it is NOT for

{prov.get('not_for', '')}

## Reproduce

```
{prov.get('reproduce', '')}
```

Training took {sr['training']['seconds']} s on {sr['training']['machine']} (seed {sr['training']['seed']},
{sr['training']['epochs']} epochs{loss_phrase(sr['training'])}).
{prov.get('repeatability') or 'Bit-identical weights are not expected across CPUs.'}
{versions_section(meta)}"""
    path.write_text(text)


_MEDMNIST_ANCHORS = """MedMNIST v2 (Yang et al. 2023, Table 3) on the same test split: ResNet-18 (28) AUC 0.944 /
ACC 0.854, ResNet-50 (224) 0.962 / 0.884, Google AutoML Vision 0.991 / 0.946."""


def _extra_rows(metrics: dict[str, Any]) -> str:
    """Beyond validation and test: both held-out splits pooled, and the test split by group (view, age)."""
    rows = []
    if "held_out" in metrics:
        rows.append(_row("validation + test (both held out, pooled)", metrics["held_out"]))
    rows += [_row(f"test, {group}", m) for group, m in metrics.get("test_by_view", {}).items()]
    if not rows:
        return ""
    return ("\nThe same, pooled and by group (each at the operating point fixed on validation):\n\n"
            "| split | images | AUROC [95% CI] | accuracy [95% CI] | sensitivity [95% CI] | specificity [95% CI] "
            "| ECE |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


def scope_text(scope: dict[str, Any] | None) -> str:
    """A card's scope in words, from the bundle's ``secondreader.scope``."""
    if not scope:
        return "No scope declared: screening applies it to every eligible image."
    lo, hi = (scope.get("age_years") or [None, None])
    ages = ("any age" if lo is None and hi is None else f"aged {lo} years and over" if hi is None
            else f"aged up to {hi} years" if lo is None else f"aged {lo}-{hi} years")
    return "\n".join([
        f"- patients {ages}; a study whose age cannot be read (Patient's Age, or Patient's Birth Date and "
        f"the Study Date): **{scope.get('unknown_age', 'applies').replace('_', ' ')}**",
        f"- views {', '.join(scope.get('views', []))}; modalities {', '.join(scope.get('modalities', []))}; "
        f"body part {', '.join(scope.get('body_parts', []))}",
        f"- population: {scope.get('population', '').strip()}",
        f"- limits: {scope.get('limits', '').strip()}",
        "",
        "Outside it, screening reports the finding as not applicable, with the reason: it neither scores nor "
        "routes.",
    ])


def describe_calibration(cal: dict[str, Any]) -> str:
    """A bundle's calibration in words, for its card."""
    method = cal.get("method", "platt")
    if method == "isotonic":
        return (f"isotonic regression ({len(cal['logits'])} knots over logits {cal['logits'][0]:g} to "
                f"{cal['logits'][-1]:g}, flat beyond them)")
    if method == "temperature":
        return f"temperature scaling (T={cal['temperature']})"
    return f"Platt scaling (a={cal['a']}, b={cal['b']})"


def loss_phrase(training: dict[str, Any]) -> str:
    """", loss: ..." for the card's training line, where the bundle records its loss."""
    return f", loss: {training['loss']}" if training.get("loss") else ""


def versions_section(meta: dict[str, Any]) -> str:
    """The card's closing "Versions" section: the bundle's changelog, one line per version."""
    lines = "\n".join(f"- **{version}**: {change}" for version, change in meta.get("changelog", {}).items())
    return f"\n## Versions\n\n{lines}\n" if lines else ""
