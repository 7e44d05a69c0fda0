"""The docs follow the code: the patch table's rows, and the public surface in api.md.

Adding a runner or bus is its module, its line in ``table.py`` and its test; this test
then names the docs row that is missing (``docs/runners.md`` for runners,
``docs/listeners.md`` for buses, the name list in ``docs/configuration.md``), and a
row left behind by a removed entry.  ``docs/api.md`` lists exactly ``ctxrelay.__all__``,
every command and the installed entry points.  The runner modules never import their framework,
so this runs in every venv.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from ctxrelay import table
from ctxrelay.patching import Patch

DOCS = Path(__file__).resolve().parent.parent / "docs"
_CODE = re.compile(r"`([^`]+)`")


def _rows(first_header: str, column: str) -> list[dict[str, str]]:
    """Rows of the tables in ``docs/*.md`` whose header starts with ``first_header`` and
    has ``column`` (a runner documented on a page of its own still counts)."""
    rows: list[dict[str, str]] = []
    for doc in sorted(DOCS.glob("*.md")):
        header: list[str] | None = None
        for line in doc.read_text(encoding="utf-8").splitlines():
            if not line.startswith("|"):
                header = None
                continue
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if header is None:
                header = cells if cells[0] == first_header and column in cells else []
            elif header and not set(line) <= set("|-: "):
                rows.append({"doc": doc.name, **dict(zip(header, cells, strict=False))})
    return rows


def _code(cell: str) -> list[str]:
    return _CODE.findall(cell)


def _patches(package: str, names: tuple[str, ...]) -> list[Patch]:
    modules = [importlib.import_module(f"ctxrelay.{package}.{name}") for name in names]
    return [patch for module in modules for patch in getattr(module, "PATCHES", ())]


PATCHED = "patched (`module.attr`)"
RUNNER_ROWS = _rows("runner", PATCHED)  # | runner | entry | patched (`module.attr`) | ...
BUS_ROWS = _rows("bus (name)", "dispatch span around")


def test_the_tables_are_found() -> None:
    assert RUNNER_ROWS, f"no docs table with the columns `runner`, `entry`, `{PATCHED}`"
    assert BUS_ROWS, "no docs table with the columns `bus (name)`, `dispatch span around`"


@pytest.mark.parametrize(
    "patch", _patches("runners", table.RUNNERS), ids=lambda p: f"{p.name}:{p.path}"
)
def test_every_runner_patch_has_a_row_in_runners_md(patch: Patch) -> None:
    """A row whose *entry* names the patch and whose *patched* column says what it wraps."""
    target = f"{patch.module}.{patch.path}"
    rows = [r for r in RUNNER_ROWS if patch.name in _code(r.get("entry", ""))]
    assert rows, (
        f"docs/runners.md (or any docs runner table): no row with `{patch.name}` as its entry"
    )
    assert any(target in _code(r.get(PATCHED, "")) for r in rows), (
        f"docs: no `{patch.name}` row names `{target}` in its patched column"
    )


@pytest.mark.parametrize(
    "patch",
    _patches("listeners", table.LISTENERS),
    ids=lambda p: f"{p.name}:{p.path}",
)
def test_every_bus_patch_has_a_row_in_listeners_md(patch: Patch) -> None:
    """A row named ``(`bus`)`` that names the wrapped method (``Class.method`` or ``method``)."""
    rows = [r for r in BUS_ROWS if f"(`{patch.name}`)" in r["bus (name)"]]
    assert len(rows) == 1, f"docs/listeners.md: {len(rows)} rows for the bus `{patch.name}`"
    method = patch.path.rsplit(".", 1)[-1]
    named = [c for cell in rows[0].values() for c in _code(cell)]
    assert any(c.endswith(patch.path) or c == method for c in named), (
        f"docs/listeners.md: the `{patch.name}` row does not name `{patch.path}`"
    )


def test_every_docs_row_is_a_table_entry() -> None:
    """No row is left for a runner or bus that the table no longer has."""
    known = set(table.names())
    entries = {_code(r["entry"])[0] for r in RUNNER_ROWS if _code(r.get("entry", ""))}
    buses = {m.group(1) for r in BUS_ROWS if (m := re.search(r"\(`([^`]+)`\)", r["bus (name)"]))}
    assert entries - known == set(), "docs/runners.md rows for entries not in table.py"
    assert buses - known == set(), "docs/listeners.md rows for buses not in table.py"


def test_configuration_md_lists_every_name() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    start = text.index("Names for `CTXRELAY_INCLUDE`")
    listed = set(_code(text[start : text.index("\n\n", text.index("\n- ", start))]))
    missing = [name for name in table.names() if name not in listed]
    assert missing == [], f"docs/configuration.md: names missing from the list: {missing}"


# --- docs/api.md: the public surface ----------------------------------------------------


def _first_column(title: str) -> list[str]:
    """The first code span of each table row's first cell under ``## title`` in api.md."""
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    found = []
    for line in text[start : end if end != -1 else None].splitlines():
        if line.startswith("|") and not set(line) <= set("|-: "):
            found += _code(line.strip("|").split("|")[0])[:1]
    return found


def test_api_md_lists_exactly_the_names_of_ctxrelay_all() -> None:
    import ctxrelay

    listed = _first_column("Python names")
    top = {name.removeprefix("ctxrelay.") for name in listed if name.count(".") == 1}
    assert top == set(ctxrelay.__all__)
    for dotted in (name for name in listed if name.count(".") > 1):
        module, _, attr = dotted.rpartition(".")
        assert hasattr(importlib.import_module(module), attr), dotted


def test_api_md_lists_every_command() -> None:
    from ctxrelay.cli import COMMANDS

    listed = {name.split()[1] for name in _first_column("The command line")}
    assert set(COMMANDS) <= listed


def test_api_md_lists_the_installed_entry_points() -> None:
    from importlib.metadata import distribution

    installed = {(ep.group, ep.name, ep.value) for ep in distribution("ctxrelay").entry_points}
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    for group, name, value in installed:
        assert f"| `{group}` | `{name}` | `{value}`" in text, (group, name, value)


def test_api_md_lists_exactly_the_settings_of_configuration_md() -> None:
    table_rows = (DOCS / "configuration.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `(CTXRELAY_[A-Z_]+)`", table_rows, re.MULTILINE))
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    settings = text[
        text.index("\n## Settings") : text.index("\n## ", text.index("\n## Settings") + 1)
    ]
    listed = set(re.findall(r"`(CTXRELAY_[A-Z_]+)`", settings)) - {"CTXRELAY_RUN"}
    assert listed == documented
