"""docs/configuration.md is generated from the Settings fields and committed: it must be current."""

from __future__ import annotations

from pathlib import Path

from secondreader.config import Settings
from secondreader.settings_docs import settings_markdown

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_configuration_page_is_generated_from_the_settings() -> None:
    generated = settings_markdown()
    for name, field in Settings.model_fields.items():
        assert f"`SECONDREADER_{name.upper()}`" in generated
        assert field.description, f"setting {name} has no description"
    assert PAGE.read_text() == generated, (
        "docs/configuration.md is out of date: python -m secondreader.settings_docs > docs/configuration.md")
