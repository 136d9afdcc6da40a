"""The README's layout section matches the code: every package and module of ctrlab is named
there, and every module it names exists (models/ and nn/ are described as a whole)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DESCRIBED_AS_A_WHOLE = {"models", "nn"}  # "one file per model", "blocks"


def layout_block() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Layout"):]
    return section[section.index("```") + 3:section.index("```", section.index("```") + 3)]


def package_blocks(block: str) -> dict[str, str]:
    """``name/`` -> the text of its entry (its first line and the deeper-indented lines after it)."""
    out: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        start = re.match(r"^  (\w+)/", line)
        if start:
            current = start.group(1)
            out[current] = line[start.end():]
        elif current and re.match(r"^ {5,}\S", line):
            out[current] += "\n" + line
        else:
            current = None
    return out


def test_every_package_and_module_is_in_the_layout():
    block = layout_block()
    blocks = package_blocks(block)
    packages = sorted(p.parent.name for p in (REPO / "ctrlab").glob("*/__init__.py"))
    named_packages = set(re.findall(r"\b(\w+)/", block))
    assert not [p for p in packages if p not in named_packages], "packages missing from README's layout"
    top_modules = sorted(p.name for p in (REPO / "ctrlab").glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert not [m for m in top_modules if not re.search(rf"\b{re.escape(m)}\b", block)], \
        "top-level modules missing from README's layout"
    for package in packages:
        if package in DESCRIBED_AS_A_WHOLE:
            continue
        assert package in blocks, f"{package}/ has no entry of its own in README's layout"
        modules = sorted(p.name for p in (REPO / "ctrlab" / package).glob("*.py") if p.stem != "__init__")
        missing = [m for m in modules if not re.search(rf"\b{re.escape(m)}\b", blocks[package])]
        assert not missing, f"ctrlab/{package}/ modules missing from README's layout: {missing}"


def test_every_module_the_layout_names_exists():
    for package, text in package_blocks(layout_block()).items():
        for name in re.findall(r"\b(\w+\.py)\b", text):
            assert (REPO / "ctrlab" / package / name).is_file(), f"README's layout names ctrlab/{package}/{name}"
