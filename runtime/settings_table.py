"""The README's settings table, written from the Settings (flags, variables,
defaults, meanings), so the two cannot drift apart (as datasette documents its
settings from one table, and cog checks generated text).

    python -m runtime.settings_table          rewrite the table in README.md
    python -m runtime.settings_table --check  exit 1 when README.md's table is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from runtime.settings import Settings, flag_of, variable_of

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN = "<!-- settings table: written by `python -m runtime.settings_table` from runtime/settings.py -->"
END = "<!-- end of settings table -->"


def default_text(value: Any) -> str:
    """How the table shows a default: unset, empty, off/on, or the value as code."""
    if value is None:
        return "unset"
    if value == "" and isinstance(value, str):
        return "empty"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def row(name: str, field: FieldInfo) -> str:
    flag, variable = flag_of(name), variable_of(name)
    meaning = field.description or ""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if extra.get("readme_see"):
        meaning += f" {extra['readme_see']}"
    return f"| `{flag}` | `{variable}` | {default_text(field.default)} | {meaning} |"


def table(settings: type[Settings] = Settings) -> str:
    lines = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    lines += [row(name, field) for name, field in settings.model_fields.items()]
    return "\n".join(lines)


def with_table(readme: str) -> str:
    """`readme` with the text between the markers replaced by the current table."""
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return f"{readme[:start]}\n{table()}\n{readme[end:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.settings_table", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md's table is not current")
    args = parser.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    current = with_table(text)
    if args.check:
        if current != text:
            print(
                "README.md's settings table is stale: run python -m runtime.settings_table", file=sys.stderr
            )
            return 1
        return 0
    README.write_text(current, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
