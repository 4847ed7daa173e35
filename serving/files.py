"""Image files named on a command line: files as given, folders walked for images.

Shared by `hoh predict` and `hoh serve perf-data`, which both take IMAGE_OR_DIR arguments.
"""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def expand_images(items: list[str]) -> list[Path]:
    """Files as given; directories -> their image files (recursive, sorted)."""
    from hoh.errors import HohError

    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise HohError(f"no {'/'.join(IMAGE_SUFFIXES)} files under {path}")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise HohError(f"{path} does not exist")
    return paths
