"""Manifests of DICOM files as training and test data: the worklist's export of radiologists' verdicts
trains and evaluates a model end to end, and the reader takes JSON, folders, zip members, frames,
boxes and masks, with clear errors for what it cannot use."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from skimage.transform import resize

from secondreader.cli import main
from secondreader.store import Store
from secondreader.training.data import load_manifest, load_medmnist
from secondreader.worklist import Worklist

from ..conftest import CANARY_NAME, ROOT
from ..factories import make_cxr_dataset, to_bytes, write
from .test_worklist import _result

SIDE = 280  # source pixels; the 28 px model grid is one cell per 10 x 10 of them


def _dicom(tmp_path: Path, name: str, picture: np.ndarray | None = None, **kw: object) -> Path:
    pixels = None if picture is None else np.clip(resize(picture.astype(float), (SIDE, SIDE), order=1), 0, 1)
    return write(make_cxr_dataset(SIDE, SIDE, pixels=pixels, **kw), tmp_path / name)  # type: ignore[arg-type]


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_the_worklists_verdicts_train_and_evaluate_a_model(shared_data: Path, store: Store, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    source = load_medmnist(shared_data / "pneumoniamnist" / "pneumoniamnist.npz", limit=60)["val"]  # mixed labels
    worklist = Worklist(store)
    truth: dict[str, int] = {}
    for i in range(60):
        uid = f"1.2.826.0.1.3680043.8.498.7{i:03d}"  # fixed: the export's split hashes the study
        path = _dicom(tmp_path / "spool", f"{i}.dcm", source.images[i, 0].numpy(), study_uid=uid,
                      sop_uid=uid + ".1")
        result = _result(uid, 0.9, regions=2)  # region 1: rows 0-8, region 2: rows 10-18; cols 10-30
        worklist.record_result(result, files={uid + ".1": (str(path), None)})
        label = int(source.labels[i])
        # a positive image: one region confirmed, the other a false positive; a negative: both false
        worklist.add_review(uid, "pneumonia-1", "confirmed_miss" if label else "false_positive", "Dr A", actor="k")
        worklist.add_review(uid, "pneumonia-2", "false_positive", "Dr A", actor="k")
        truth[str(path)] = label
    exported = tmp_path / "reviews.csv"
    rows = list(csv.DictReader(io.StringIO(worklist.export_manifest(exported))))
    assert len(rows) == 120 and {r["split"] for r in rows} == {"train", "val", "test"}
    by_path: dict[str, set[str]] = {}
    for r in rows:
        by_path.setdefault(r["path"], set()).add(r["split"])
    assert all(len(splits) == 1 for splits in by_path.values())  # a study's rows share one split

    splits = load_manifest(exported, finding="pneumonia", size=(28, 28))
    assert sum(len(s.labels) for s in splits.values()) == 60  # each image once, not once per region
    assert sum(int(s.labels.sum()) for s in splits.values()) == sum(truth.values())
    for split in splits.values():
        assert split.masks is not None and split.annotated is not None
        # positives carry the confirmed region (rows 0-8 -> grid row 0; cols 10-30 -> cells 1-2),
        # never the false positive's box (rows 10-18 -> grid row 1); negatives carry no mark
        assert (split.annotated == (split.labels == 1)).all()
        for mask in split.masks[split.annotated]:
            assert sorted(zip(*np.nonzero(mask), strict=True)) == [(0, 1), (0, 2)]

    raw = yaml.safe_load((ROOT / "training" / "configs" / "cxr-pneumonia.yaml").read_text())
    raw["data"] = {"kind": "manifest", "path": str(exported), "finding": "pneumonia"}
    raw["schedule"].update({"epochs": 1, "batch_size": 16, "device": "cpu"})
    raw["output_dir"] = str(tmp_path / "bundle")
    raw["checkpoint_dir"] = str(tmp_path / "runs")
    config = tmp_path / "reviews.yaml"
    config.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["train", str(config), "--out", str(tmp_path / "bundle")]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["test"]["n"] == len(splits["test"].labels)
    assert main(["evaluate", str(tmp_path / "bundle"), "--data", str(exported)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == len(splits["test"].labels) and report["auroc"] == trained["test"]["auroc"]
    pointing = report["saliency_pointing"]
    assert pointing["n"] == int(splits["test"].labels.sum()) > 0
    assert 0 <= pointing["hits"] <= pointing["n"]
    lo, hi = pointing["hit_rate_ci95"]
    assert lo <= pointing["hit_rate"] <= hi


def test_json_manifests_folders_zip_members_frames_and_masks(tmp_path: Path,
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    # a folder of negatives (one row), a zip's member, the second frame of a multi-frame image, and
    # marks as JSON boxes, a PNG mask and an .npy mask
    for i in range(3):
        _dicom(tmp_path / "negatives", f"n{i}.dcm")
    with zipfile.ZipFile(tmp_path / "negatives" / "more.zip", "w") as archive:  # a folder's zips count too
        archive.writestr("m.dcm", to_bytes(make_cxr_dataset(SIDE, SIDE)))
    with zipfile.ZipFile(tmp_path / "batch.zip", "w") as archive:
        archive.writestr("inner/z.dcm", to_bytes(make_cxr_dataset(SIDE, SIDE)))
    _dicom(tmp_path, "multi.dcm", frames=2)
    _dicom(tmp_path, "boxed.dcm")
    _dicom(tmp_path, "png.dcm")
    _dicom(tmp_path, "npy.dcm")
    drawn = np.zeros((SIDE, SIDE), np.uint8)
    drawn[200:215, 100:105] = 255
    Image.fromarray(drawn).save(tmp_path / "png-mask.png")
    np.save(tmp_path / "npy-mask.npy", drawn[::-1] > 0)
    rows = [
        {"path": "negatives", "split": "train", "nodule": 0},
        {"path": "batch.zip", "member": "inner/z.dcm", "split": "train", "nodule": 1},
        {"path": "multi.dcm", "frame": 2, "split": "train", "nodule": None},  # unknown: passed over
        {"path": "multi.dcm", "frame": 2, "split": "val", "nodule": 0},
        {"path": "boxed.dcm", "split": "val", "nodule": 1, "boxes": [[0, 0, 5, 5], [275, 275, 280, 280]]},
        {"path": "png.dcm", "split": "test", "nodule": True, "mask": "png-mask.png"},
        {"path": "npy.dcm", "split": "test", "nodule": 1, "mask": "npy-mask.npy"},
    ]
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"rows": rows}))
    splits = load_manifest(manifest, finding="nodule", size=(28, 28))
    assert splits["train"].labels.tolist() == [0, 0, 0, 0, 1]
    assert splits["train"].annotated is None  # nothing marked there
    val = splits["val"]
    assert val.labels.tolist() == [0, 1] and val.annotated is not None and val.masks is not None
    assert val.annotated.tolist() == [False, True]
    assert sorted(zip(*np.nonzero(val.masks[1]), strict=True)) == [(0, 0), (27, 27)]
    test = splits["test"]
    assert test.masks is not None
    assert sorted(zip(*np.nonzero(test.masks[0]), strict=True)) == [(20, 10), (21, 10)]
    assert sorted(zip(*np.nonzero(test.masks[1]), strict=True)) == [(6, 10), (7, 10)]  # flipped rows

    def refused(changed: list[dict[str, object]], match: str) -> None:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(changed))
        with pytest.raises(ValueError, match=match) as caught:
            load_manifest(bad, finding="nodule", size=(28, 28))
        assert CANARY_NAME not in str(caught.value)

    refused(rows + [{"path": "boxed.dcm", "split": "train", "nodule": 1}], "rows 5 and 8 put the same image")
    refused(rows[:-1] + [{**rows[-1], "nodule": 2}], "row 7: the finding's label must be 1, 0 or empty")
    refused(rows[:-1] + [{**rows[-1], "boxes": [[5, 5, 1, 9]]}], "row 7: a box must have row_max > row_min")
    refused([{**rows[0], "boxes": [[0, 0, 5, 5]]}] + rows[1:], "row 1: boxes and masks mark one image, not a folder")
    refused(rows[:-1] + [{**rows[-1], "mask": "nowhere.png"}], "row 7: its mask file is not there")
    refused(rows[:-2] + [{**rows[-2], "mask": "npy-mask.npy", "path": "multi.dcm", "frame": 3}],
            "row 6: frame 3 of an image with 2")
    refused(rows[:-1] + [{**rows[-1], "boxes": [[0, 0, 5, 300]]}], "row 7: a box reaches row 5, column 300 of a 280")
    refused(rows[:-2], "manifest has no usable test images")
    refused(rows[:-1] + [{**rows[-1], "boxes": {"row": 1}}], "row 7: boxes is a list of")
    refused(rows[:-1] + [{**rows[-1], "frame": "second"}], "row 7: frame is a number")
    (tmp_path / "broken.png").write_bytes(b"not a picture")
    refused(rows[:-1] + [{**rows[-1], "mask": "broken.png"}], "row 7: its mask cannot be read")
    # only the splits asked for are read (an outside test set needs no train or val rows)
    test_only = tmp_path / "test-only.json"
    test_only.write_text(json.dumps(rows[-2:]))
    assert list(load_manifest(test_only, finding="nodule", size=(28, 28), splits=("test",))) == ["test"]

    # training refuses a split that cannot calibrate or score (here: test has positives only), and a
    # broken config, with a message and exit status 2 rather than a traceback
    raw = yaml.safe_load((ROOT / "training" / "configs" / "cxr-pneumonia.yaml").read_text())
    raw["data"] = {"kind": "manifest", "path": str(manifest), "finding": "nodule"}
    raw["output_dir"] = str(tmp_path / "bundle")
    config = tmp_path / "nodule-manifest.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", str(config)]) == 2
    assert "the test split holds 2 images, all labelled 1" in capfd.readouterr().err
    config.write_text("name: [unclosed\n")
    assert main(["train", str(config)]) == 2
    assert "nodule-manifest.yaml" in capfd.readouterr().err
    assert not (tmp_path / "bundle").exists()
