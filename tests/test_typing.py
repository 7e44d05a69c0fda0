"""Type checkers see what the docs promise: ``py.typed`` ships, and ``bind`` keeps the
wrapped function's signature (so a wrong call to the bound function is a type error)."""

from __future__ import annotations

from pathlib import Path

import pytest

import ctxrelay

api = pytest.importorskip("mypy.api", reason="mypy is not installed (the lint extra)")

SNIPPET = """\
import ctxrelay

def greet(name: str, *, times: int = 1) -> str:
    return name * times

bound = ctxrelay.bind(greet)
reveal_type(bound)
bound("x", times=2)
bound(1)
"""


def test_py_typed_ships_in_the_package() -> None:
    assert (Path(ctxrelay.__file__).parent / "py.typed").is_file()


def test_bind_keeps_the_signature_for_type_checkers(tmp_path: Path) -> None:
    source = tmp_path / "snippet.py"
    source.write_text(SNIPPET)
    out, _, status = api.run(
        [str(source), "--cache-dir", str(tmp_path / "cache"), "--no-error-summary"]
    )
    # "builtins." prefixes depend on the mypy version
    lines = [ln.split(": ", 1)[-1].replace("builtins.", "") for ln in out.splitlines()]
    # With `Callable[..., T]` this would read "def (*Any, **Any) -> str", and no error.
    assert 'note: Revealed type is "def (name: str, *, times: int =) -> str"' in lines, out
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and 'incompatible type "int"; expected "str"' in errors[0], out
    assert status == 1
