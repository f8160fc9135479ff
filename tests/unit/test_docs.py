"""The options reference is generated from the config and kept current."""

from __future__ import annotations

import sys

from tests.conftest import ROOT


def test_options_md_is_current_and_names_every_key():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_options
    finally:
        sys.path.pop(0)
    text = (ROOT / "docs" / "options.md").read_text()
    assert text == gen_options.render(), "run: .venv/bin/python scripts/gen_options.py"
    from surefit.config import all_keys

    for key in all_keys():
        if "." in key:
            assert f"`{key}`" in text, key
