"""Real images as `perf_analyzer --input-data`, and the libraries its bundled binary lacks.

    hoh serve perf-data DIR_OR_IMAGES... --out perf-data.json [--lib-dir DIR]
    LD_LIBRARY_PATH=DIR:... perf_analyzer -m hoh -u 127.0.0.1:8000 --input-data perf-data.json \\
        --concurrency-range 1:8:2      (the exact line is printed)

perf_analyzer's JSON carries a BYTES tensor as `{"b64": ...}` of Triton's serialized form (a
4-byte little-endian length before each element): raw image bytes are read as a length and
refused ("expecting string of length 1196314761", the PNG signature). One entry per image, each
a batch-1 request of shape [1].

The `perf_analyzer` in the tritonclient 2.51 wheel needs `libb64.so.0d` and `libcudart.so.12`;
nvidia-pytriton ships both, renamed by auditwheel (`libb64-<hash>.so.0d`), so a directory of
symlinks under the expected names is all it takes (docs/SERVING.md#perf_analyzer).
"""

from __future__ import annotations

import base64
import struct
from pathlib import Path
from typing import Sequence

from hoh.errors import UsageError

INPUT_NAME = "image_bytes"
# soname perf_analyzer asks for -> auditwheel's name for it in nvidia_pytriton.libs
MISSING_LIBRARIES = {"libb64.so.0d": "libb64-*.so.0d", "libcudart.so.12": "libcudart-*.so.12*"}


def perf_input_data(images: Sequence[bytes]) -> dict:
    """`--input-data` JSON: one batch-1 request per image."""
    if not images:
        raise UsageError("no images for perf_analyzer's input data")
    return {
        "data": [
            {
                INPUT_NAME: {
                    "b64": base64.b64encode(struct.pack("<I", len(b)) + b).decode("ascii"),
                    "shape": [1],
                }
            }
            for b in images
        ]
    }


def link_missing_libraries(libs: Path, dest: Path) -> Path:
    """Symlinks named as perf_analyzer's NEEDED entries, to nvidia-pytriton's copies."""
    dest.mkdir(parents=True, exist_ok=True)
    for soname, pattern in MISSING_LIBRARIES.items():
        found = sorted(p for p in libs.glob(pattern) if p.is_file())
        if not found:
            raise UsageError(f"{libs} holds no {pattern}: is nvidia-pytriton installed?")
        link = dest / soname
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(found[0])
    return dest
