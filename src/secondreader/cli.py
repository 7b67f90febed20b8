"""The ``secondreader`` command (contract 1).

``screen`` prints results on stdout (JSON Lines with ``--format json``) and logs on stderr; it
exits 0 when every study got a result object, 2 on a usage error, 1 when it cannot run at all
(no model, for example).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import __version__
from .config import Settings, is_loopback
from .dicom.samples import sample_paths
from .errors import SecondReaderError
from .logsafe import configure_logging, set_secret

__all__ = ["main"]

logger = logging.getLogger("secondreader.cli")

def _cmd_screen(args: argparse.Namespace, settings: Settings) -> int:
    from .model.card import bundle_dirs
    from .model.dense import load_predictor
    from .pipeline import ScreeningOptions, screen_paths

    paths = list(args.paths)
    if args.samples:
        samples = sample_paths()
        if not samples:
            logger.error("sample studies need the pydicom-data package: pip install pydicom-data")
            return 2
        paths.extend(samples)
    if not paths:
        logger.error("nothing to screen: give files, folders or zips, or --samples")
        return 2
    models_dir = args.models_dir or settings.models_dir
    predictors = [load_predictor(d, device=args.device or settings.device)
                  for d in bundle_dirs(models_dir, args.model)]
    from .model.modes import site_modes
    from .quarantine import Quarantine

    modes = site_modes([p.card for p in predictors], settings.resolved_model_modes())
    options = ScreeningOptions(predictors=predictors, max_pixels=settings.max_image_pixels, out_dir=args.out,
                               series=settings.output_series(),
                               quarantine=Quarantine(settings.home / "quarantine"), quarantine_channel="cli",
                               modes=modes)
    count = 0
    for result in screen_paths(paths, options):
        count += 1
        data = result.to_json()
        if args.out is not None and result.study_instance_uid:
            target = args.out / result.study_instance_uid / "result.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(data, indent=2) + "\n")
        if args.format == "json":
            sys.stdout.write(json.dumps(data) + "\n")
        else:
            sys.stdout.write(_text_line(data) + "\n")
        sys.stdout.flush()
    logger.info("screened %d result(s)", count)
    return 0


def _finding_text(f: dict[str, Any]) -> str:
    """``pneumonia 0.97 +``; ``nodule 0.93 + (shadow)`` for a shadow model's finding (shown, routes
    nothing); ``pneumonia n/a`` where the study is outside the model's scope."""
    if f.get("applicable", True) is False:
        return f"{f['code']} n/a"
    text = f"{f['code']} {f['probability']:.2f}{' +' if f['positive'] else ''}"
    if f.get("mode") == "shadow":
        return f"{text} (shadow)"
    return text if f.get("routes", True) else f"{text} (not routing)"  # a result from before modes


def _text_line(data: dict[str, Any]) -> str:
    findings = ", ".join(_finding_text(f) for f in data["findings"])
    priority = data["priority"]
    uid = data["study_instance_uid"] or f"(no study UID: {data.get('source')})"
    status = data["status"]
    reason = f" - {data['reason']}" if data["reason"] else ""
    reasons = list(dict.fromkeys(f["not_applicable_reason"] for f in data["findings"]
                                 if f.get("applicable", True) is False and f.get("not_applicable_reason")))
    if reasons:
        reason += " - not applicable: " + "; ".join(reasons)
    return (f"{uid}  {status:<10} score {priority['score']:>3} route {priority['route']:<6} "
            f"[{findings}]{reason}")


def _cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    import yaml

    from .training.config import load_config, resolve_output
    from .training.train import train

    try:
        cfg = load_config(args.config)
        if args.device:  # checked where it is resolved (ModelError: not a device, or no CUDA)
            cfg = cfg.model_copy(update={"schedule": cfg.schedule.model_copy(update={"device": args.device})})
        shipped_dir = settings.models_dir / cfg.name
        shipped = _read_metadata(shipped_dir)  # read now: --into-models overwrites it
        if args.folds_only:  # no bundle: nowhere to resolve
            if args.out is not None or args.into_models:
                raise ValueError("--folds-only writes no bundle: --out and --into-models do not apply")
        else:  # the bundle goes to a new runs folder, --out, or (asked for) the models folder; never the config's
            cfg = cfg.model_copy(update={"output_dir": resolve_output(cfg, args.out, args.into_models, settings)})
        meta = train(cfg, config_path=args.config, resume=args.resume, folds_only=args.folds_only)
    except (ValueError, FileNotFoundError, yaml.YAMLError) as exc:  # the config or the data, without a traceback
        logger.error("%s: %s", args.config.name, exc)
        logger.debug("where it was raised", exc_info=True)  # --log-level DEBUG, for a bug rather than bad input
        return 2
    if "leave_one_out" in meta:
        held = meta["leave_one_out"]
        sys.stdout.write(json.dumps({"recipe": cfg.name, "test": held["test"], "folds": held["folds"]}) + "\n")
        return 0
    test = meta["secondreader"]["metrics"]["test"]
    sys.stderr.write(f"bundle written to {cfg.output_dir}\n"
                     + compare_bundles(meta, shipped, shipped_label=_shipped_label(cfg.output_dir, shipped_dir)))
    sys.stdout.write(json.dumps({"model": f"{meta['name']}@{meta['version']}", "bundle": str(cfg.output_dir),
                                 "test": test}) + "\n")
    return 0


def _read_metadata(bundle: Path) -> dict[str, Any] | None:
    """A bundle's ``configs/metadata.json``, or None where there is none (or it cannot be read)."""
    try:
        data = json.loads((bundle / "configs" / "metadata.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _shipped_label(out: Path, shipped_dir: Path) -> str:
    return "replaced" if out.resolve() == shipped_dir.resolve() else "shipped"


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def compare_bundles(new: Path | dict[str, Any], shipped: Path | dict[str, Any] | None,
                    shipped_label: str = "shipped") -> str:
    """A small table of two bundles (folders, or their metadata.json already read): version, weights
    sha256 (first 8) and the held-out headline figures, test AUROC (a classification model's, or a
    dense model's study AUROC) and FROC sensitivity at 1 false region per image (dense models). What a
    bundle lacks shows as ``-``; a missing shipped bundle is said so."""

    def row(label: str, bundle: Path | dict[str, Any]) -> str:
        meta = _read_metadata(bundle) if isinstance(bundle, Path) else bundle
        test = _dig(meta, "secondreader", "metrics", "test")
        auroc = _dig(test, "auroc") if _dig(test, "auroc") is not None else _dig(test, "study", "auroc")
        froc = _dig(test, "froc", "sensitivity", "1.0")
        sha = _dig(meta, "secondreader", "weights_sha256")
        cells = [_dig(meta, "version"), sha[:8] if isinstance(sha, str) else None,
                 *(f"{v:.4f}" if isinstance(v, int | float) else None for v in (auroc, froc))]
        return f"{label:<9}" + "".join(f"{c if c is not None else '-':<12}" for c in cells).rstrip() + "\n"

    head = f"{'':<9}{'version':<12}{'weights':<12}{'test AUROC':<12}{'FROC@1FP'}".rstrip() + "\n"
    lines = head + row("new", new)
    if shipped is None or (isinstance(shipped, Path) and _read_metadata(shipped) is None):
        return lines + f"{shipped_label:<9}(none)\n"
    return lines + row(shipped_label, shipped)


def _cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from .training.evaluate import evaluate_bundle, evaluate_dense_bundle

    try:
        if (args.data is None) == (args.config is None):
            raise ValueError("evaluate needs one of --data (a classification model's .npz or manifest) and --config "
                             "(the training config of a localisation model)")
        if args.config is not None:
            if args.recalibrate:
                raise ValueError("--recalibrate applies to a classification model's --data")
            report = evaluate_dense_bundle(args.bundle, args.config)
        else:
            report = evaluate_bundle(args.bundle, args.data, split=args.split,
                                     device=args.device or settings.device, recalibrate=args.recalibrate)
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


def _cmd_evaluate_labeler(args: argparse.Namespace, settings: Settings) -> int:
    from .reports.evaluate import evaluate, format_text, meets_targets, part_of, read_openi

    try:
        reports = read_openi(args.reports)
        if args.part != "all":
            reports = [r for r in reports if part_of(r.report_id) == args.part]
        summary = evaluate(reports, args.finding or None)
    except (ValueError, FileNotFoundError, OSError) as exc:
        logger.error("%s", exc)
        return 2
    summary["part"] = args.part
    if args.format == "json":
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        sys.stdout.write(format_text(summary, title=f"{args.reports.name}, part {args.part}"))
    if args.check_targets and not all(meets_targets(summary).values()):
        return 1
    return 0


def _cmd_export_reviews(args: argparse.Namespace, settings: Settings) -> int:
    from .store import Store
    from .worklist import Worklist

    store = Store(settings.resolved_database_url())
    store.migrate()
    text = Worklist(store).export_manifest(args.out)
    rows = max(0, text.count("\n") - 1)
    sys.stderr.write(f"{rows} verdict(s) written to {args.out}; fine-tune with data.kind: manifest "
                     "(see training/README.md)\n")
    return 0


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import os
    import secrets
    import subprocess

    host = args.host or settings.host
    port = args.port or settings.http_port
    env = dict(os.environ)
    if not settings.api_keys:
        if not is_loopback(host):
            logger.error("refusing to serve on %s without API keys: set SECONDREADER_API_KEYS", host)
            return 2
        key = secrets.token_urlsafe(24)
        env["SECONDREADER_API_KEYS"] = key
        sys.stderr.write(f"API key for this run (no SECONDREADER_API_KEYS set): {key}\n")
    if not args.no_samples:
        env["SECONDREADER_SCREEN_SAMPLES"] = "1"
    env["SECONDREADER_HOME"] = str(settings.home.resolve())
    env["SECONDREADER_HOST"] = host  # the DICOM receiver and the HL7 listener bind the same host
    env["SECONDREADER_MODELS_DIR"] = str(Path(args.models_dir or settings.models_dir).resolve())
    env["SECONDREADER_LOG_LEVEL"] = args.log_level
    env["FORWARDED_ALLOW_IPS"] = settings.trusted_proxies.strip()  # uvicorn trusts loopback's X-Forwarded-For else
    env.setdefault("BENTOML_HOME", str((settings.home / "bentoml").resolve()))
    # Import the bundles into the BentoML model store before the service (and its class-level
    # model references) loads; the store lives under BENTOML_HOME.
    imported = subprocess.run([sys.executable, "-m", "secondreader.service.modelstore", env["SECONDREADER_MODELS_DIR"]],
                              env=env, capture_output=True, text=True, check=False)
    if imported.returncode != 0:
        logger.error("could not import the model bundles into the BentoML model store")
        return 1
    sys.stderr.write(
        f"secondreader serving on http://{host}:{port}  (viewer: http://{host}:{port}/viewer/ ; "
        "POST /v1/screen, GET /v1/studies/UID, /readyz, /metrics)\n"
    )
    sys.stderr.write(f"DICOM receiver: AE {settings.dicom_ae_title} on {host}:{settings.dicom_port}; "
                     f"HL7 v2 first reads (MLLP): {host}:{settings.hl7_port}\n")
    command = [sys.executable, "-m", "bentoml", "serve", "secondreader.service.bento:SecondReader",
               "--host", host, "--port", str(port)]
    # The process becomes BentoML's server (exec, not a child): a SIGTERM from an operator, systemd or
    # Kubernetes then reaches the server, which stops its workers and frees the ports. Run as a child,
    # the CLI died of the SIGTERM and left the server and its workers holding them.
    sys.stderr.flush()
    sys.stdout.flush()
    os.execve(sys.executable, command, env)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secondreader", description="AI second reader for chest radiographs")
    parser.add_argument("--version", action="version", version=f"secondreader {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    screen = sub.add_parser("screen", help="screen DICOM files, folders or zips")
    screen.add_argument("paths", nargs="*", type=Path, metavar="PATH")
    screen.add_argument("--format", choices=["text", "json"], default="text",
                        help="json: one JSON object per study per line (JSON Lines)")
    screen.add_argument("--out", type=Path, help="write heatmap overlays (PNG) and result.json per study here")
    screen.add_argument("--model", action="append", default=[], metavar="NAME",
                        help="model bundle under the models folder (repeatable; default all)")
    screen.add_argument("--models-dir", type=Path, help="models folder (default SECONDREADER_MODELS_DIR)")
    screen.add_argument("--device", help="auto, cpu, cuda or cuda:N (default SECONDREADER_DEVICE)")
    screen.add_argument("--samples", action="store_true",
                        help="also screen the sample studies of the pydicom-data package")
    screen.set_defaults(func=_cmd_screen)

    serve = sub.add_parser("serve", help="run the HTTP service (BentoML) with its viewer and DICOM receiver (SQLite "
                           "store and local spool unless configured otherwise)")
    serve.add_argument("--host", help="bind address (default SECONDREADER_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (default SECONDREADER_HTTP_PORT, 3000)")
    serve.add_argument("--models-dir", type=Path, help="models folder (default SECONDREADER_MODELS_DIR)")
    serve.add_argument("--no-samples", action="store_true", help="do not screen the sample studies at start")
    serve.set_defaults(func=_cmd_serve)

    train = sub.add_parser("train", help="train a model from a YAML config and write its bundle (a new runs "
                           "folder unless --out or --into-models)")
    train.add_argument("config", type=Path, metavar="CONFIG")
    train.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint")
    where = train.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, metavar="DIR", help="write the bundle here (refused if DIR already holds "
                       "one); default: a new folder $SECONDREADER_HOME/runs/<name>-<version>-<UTC time>/")
    where.add_argument("--into-models", action="store_true", help="replace the shipped bundle: write to "
                       "<models dir>/<name> (SECONDREADER_MODELS_DIR)")
    train.add_argument("--folds-only", action="store_true", help="localisation recipes: evaluate the recipe leaving "
                       "one real background out, without the final model or a bundle (the figures go to "
                       "<checkpoint_dir>/leave-one-out.json)")
    train.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the config's schedule.device, auto: "
                       "the first CUDA device when there is one); bfloat16 autocast on CUDA (schedule.mixed_precision)")
    train.set_defaults(func=_cmd_train)

    evaluate = sub.add_parser("evaluate", help="recompute a bundle's metrics on a data split")
    evaluate.add_argument("bundle", type=Path, metavar="BUNDLE")
    evaluate.add_argument("--data", type=Path, help="a classification model's test data: a MedMNIST .npz, or a "
                          "manifest of DICOM files (.csv or .json, as training reads them; boxes or masks add "
                          "the heatmap pointing game)")
    evaluate.add_argument("--config", type=Path, help="the training config of a localisation model: recomputes its "
                          "generated-chest test and scores the test images of the backgrounds it trained on")
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    evaluate.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    # checked by evaluate (secondreader.scoring.calibration, not imported here: it would slow every command)
    evaluate.add_argument("--recalibrate", metavar="METHOD",
                          help="platt, temperature or isotonic: also report the same logits calibrated by this "
                               "method, fitted on the data's val split (the bundle's operating-point rule applied "
                               "there): compare calibrations without retraining")
    evaluate.set_defaults(func=_cmd_evaluate)

    labeler = sub.add_parser("evaluate-labeler", help="measure the report labeler against the expert MeSH coding "
                             "of OpenI chest X-ray reports: sensitivity, specificity, confusion, the sentences behind "
                             "each error")
    labeler.add_argument("reports", type=Path, metavar="REPORTS", help="the OpenI XML reports: a .tgz or a folder")
    labeler.add_argument("--finding", action="append", default=[], metavar="CODE",
                         help="finding code (repeatable; default every finding with a MeSH mapping)")
    labeler.add_argument("--part", choices=["all", "tune", "check"], default="all",
                         help="check: one report in three by a hash of its id (a hold-out); tune: the others")
    labeler.add_argument("--format", choices=["text", "json"], default="text")
    labeler.add_argument("--check-targets", action="store_true",
                         help="exit 1 when a finding misses its sensitivity or specificity target")
    labeler.set_defaults(func=_cmd_evaluate_labeler)

    export = sub.add_parser("export-reviews", help="write radiologists' verdicts as a training manifest (CSV)")
    export.add_argument("--out", type=Path, required=True, help="manifest CSV to write")
    export.set_defaults(func=_cmd_export_reviews)

    from .audit.cli import add_parser as add_audit_parser

    add_audit_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        settings = Settings()
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        logger.error("invalid settings: %s", errors)
        return 2
    set_secret(settings.resolved_secret())
    try:
        code: int = args.func(args, settings)
        return code
    except SecondReaderError as exc:
        logger.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
