"""The DfG compliance badge: a small SVG stating only what the ledger proves."""

from __future__ import annotations

from html import escape
from typing import Any


def badge_svg(statement: dict[str, Any]) -> str:
    left = "DfG consent ledger"
    right = f"{statement['entries_recorded']:,} entries · {statement['consents_recorded']:,} consents"
    lw, rw = 7 * len(left) + 12, 7 * len(right) + 12
    title = (
        f"{statement['display_name'] or statement['controller']}: {statement['entries_recorded']} signed"
        f" entries on the ledger, {statement['consents_recorded']} consents, {statement['uses_recorded']}"
        f" recorded uses; checkpoint size {statement['checkpoint_size']}. Verify: {statement['verify']}"
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{lw + rw}" height="20" role="img"'
        f' aria-label="{escape(left)}: {escape(right)}">'
        f"<title>{escape(title)}</title>"
        f'<rect width="{lw}" height="20" fill="#2b4c7e"/>'
        f'<rect x="{lw}" width="{rw}" height="20" fill="#2e8540"/>'
        f'<g fill="#fff" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11">'
        f'<text x="6" y="14">{escape(left)}</text><text x="{lw + 6}" y="14">{escape(right)}</text></g></svg>'
    )
