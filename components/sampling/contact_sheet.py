"""A one-file HTML page of the selected images, to eyeball a batch before sending it out.

Thumbnails are embedded as data URIs so the page can be mailed or opened from an artifact store
without the image files beside it; at 128 pixels a batch of 100 stays around a megabyte.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Optional

THUMBNAIL_SIDE = 128


def thumbnail_data_uri(data: bytes, side: int = THUMBNAIL_SIDE) -> Optional[str]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
            img.thumbnail((side, side))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=80)
    except (OSError, ValueError, SyntaxError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _card(row: dict, thumbnail: Optional[str]) -> str:
    probabilities = ", ".join(f"{html.escape(c)} {p:.2f}" for c, p in row["probabilities"].items())
    image = (
        f'<img src="{thumbnail}" alt="">' if thumbnail else "<div class=missing>no preview</div>"
    )
    return (
        f'<figure title="{html.escape(row["source"], quote=True)}">{image}<figcaption>'
        f"#{row['rank']} score {row['score']:.3f}<br>guess <b>{html.escape(row['predicted'])}</b>"
        f"<br><small>{probabilities}</small></figcaption></figure>"
    )


def render(
    title: str, rows: list[dict], thumbnails: dict[str, Optional[str]], notes: list[str]
) -> str:
    """`rows` as in selected.jsonl; `thumbnails` maps image id -> data URI (or None)."""
    cards = "\n".join(_card(row, thumbnails.get(row["id"])) for row in rows)
    note_html = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    image_style = (
        f"width: {THUMBNAIL_SIDE}px; height: {THUMBNAIL_SIDE}px; "
        "object-fit: contain; background: #eee;"
    )
    return f"""<!doctype html>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
main {{ display: flex; flex-wrap: wrap; gap: 8px; }}
figure {{ margin: 0; width: {THUMBNAIL_SIDE + 16}px; font-size: 12px; }}
img, .missing {{ {image_style} }}
</style>
<h1>{html.escape(title)}</h1>
{note_html}
<main>
{cards}
</main>
"""
