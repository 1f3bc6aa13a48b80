"""docs/configuration.md must list every Settings field, and the deployment files must use real ones.

Pure file parsing: no Redis, no engine, well under a second.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"
COMPOSE_DIR = ROOT / "compose"

ENV_NAME = re.compile(r"SLUICE_[A-Z0-9_]*[A-Z0-9]")
# A row of a settings table: its first cell is the variable, in backticks.
TABLE_ROW = re.compile(r"^\|\s*`(SLUICE_[A-Z0-9_]+)`\s*\|", re.MULTILINE)

def env_names(fields) -> set[str]:
    return {f"SLUICE_{name.upper()}" for name in fields}


def documented_names(text: str) -> set[str]:
    # "SLUICE_LANE_QUEUE_LIMITS__INTERACTIVE" documents the field too: cut at the nested delimiter.
    return {name.split("__")[0] for name in ENV_NAME.findall(text)}


def missing_from_doc(text: str, fields) -> list[str]:
    return sorted(env_names(fields) - documented_names(text))


def stale_rows(text: str, fields) -> list[str]:
    return sorted(set(TABLE_ROW.findall(text)) - env_names(fields))


@pytest.fixture(scope="module")
def doc_text() -> str:
    return DOC.read_text()


def test_every_settings_field_is_documented(doc_text):
    missing = missing_from_doc(doc_text, Settings.model_fields)
    assert not missing, f"docs/configuration.md does not mention {missing}; add a row for each"


def test_doc_tables_name_no_unknown_variables(doc_text):
    stale = stale_rows(doc_text, Settings.model_fields)
    assert not stale, f"docs/configuration.md has rows for {stale}, which are not Settings fields"


def test_each_field_has_exactly_one_table_row(doc_text):
    rows = TABLE_ROW.findall(doc_text)
    duplicated = sorted({name for name in rows if rows.count(name) > 1})
    assert not duplicated, f"fields documented twice: {duplicated}"
    assert set(rows) == env_names(Settings.model_fields)


def test_the_check_can_fail():
    """A field added to Settings without a doc row is caught (and one documented is not)."""
    text = "| `SLUICE_API_PORT` | `int` | `8000` | | port |\n"
    assert missing_from_doc(text, ["api_port", "brand_new_field"]) == ["SLUICE_BRAND_NEW_FIELD"]
    assert missing_from_doc(text, ["api_port"]) == []
    # A prefix of another name is not a mention: SLUICE_API does not document api_port.
    assert missing_from_doc("SLUICE_API", ["api_port"]) == ["SLUICE_API_PORT"]
    # Nested form documents its field.
    assert missing_from_doc("`SLUICE_LANE_QUEUE_LIMITS__BATCH=5`", ["lane_queue_limits"]) == []
    assert stale_rows("| `SLUICE_GONE` | x |\n", ["api_port"]) == ["SLUICE_GONE"]


def test_deployment_files_use_only_real_settings():
    """A typo in compose (SLUICE_REDIS_ULR) would be silently ignored (extra="ignore"): catch it here."""
    files = [path for path in (COMPOSE_DIR / "docker-compose.yml", COMPOSE_DIR / "Dockerfile") if path.exists()]
    if not files:
        pytest.skip("no compose/ deployment files")
    known = env_names(Settings.model_fields)  # no SLUICE_* variable is read outside Settings
    used = {(path.name, name.split("__")[0]) for path in files for name in ENV_NAME.findall(path.read_text())}
    unknown = sorted((file, name) for file, name in used if name not in known)
    assert not unknown, f"SLUICE_* names that are no Settings field: {unknown}"
