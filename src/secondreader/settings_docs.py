"""The configuration reference (``docs/configuration.md``), generated from :class:`Settings`.

Each setting's environment variable, type, default and description come from the field itself, so
the page cannot drift from the code: ``tests/unit/test_settings_docs.py`` fails when the committed
page differs from what this module writes. Regenerate it with::

    python -m secondreader.settings_docs > docs/configuration.md
"""

from __future__ import annotations

import sys
from typing import Any, Literal, get_args, get_origin

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .config import Settings

__all__ = ["settings_markdown"]

_HEADER = """# Configuration

Every setting is an environment variable with the prefix `SECONDREADER_` (contract 5 in
[`contracts.md`](contracts.md)); `secondreader serve` and the other commands read them at start, and
their flags override them. The defaults make the single-machine setup work with no configuration at
all. This page is generated from the fields of `secondreader.config.Settings`
(`python -m secondreader.settings_docs > docs/configuration.md`; a test checks that it is current).

| variable | type | default | meaning |
|---|---|---|---|
"""


def _type_name(field: FieldInfo) -> str:
    annotation: Any = field.annotation
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(str(v) for v in get_args(annotation))
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "").replace("pathlib.", "").replace("NoneType", "None")


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return "computed (see meaning)"
    if field.default is PydanticUndefined or field.default is None:
        return "none"
    return f"`{field.default}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def settings_markdown() -> str:
    """The whole page, one table row per setting, in the order the class declares them."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    rows = []
    for name, field in Settings.model_fields.items():
        variable = f"`{prefix}{name.upper()}`"
        rows.append(f"| {variable} | {_cell(_type_name(field))} | {_cell(_default(field))} | "
                    f"{_cell(field.description or '')} |")
    return _HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(settings_markdown())
