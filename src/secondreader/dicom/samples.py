"""The sample studies the service screens at its first start, and the README's quickstart uses.

They come from the pydicom-data package (MIT): a real adult chest CR (RG1) in two encodings, a CR of
an extremity (RG3) and a CT slice, to show screened and ineligible results.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SAMPLE_FILES", "sample_paths"]

SAMPLE_FILES = ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG3_UNCR.dcm", "CT_small.dcm")


def sample_paths() -> list[Path]:
    """The sample files that are installed (none when pydicom-data is missing)."""
    try:
        from pydicom.data import get_testdata_file
    except ImportError:  # pragma: no cover - pydicom is a dependency
        return []
    paths = []
    for name in SAMPLE_FILES:
        found = get_testdata_file(name)
        if found:
            paths.append(Path(str(found)))
    return paths
