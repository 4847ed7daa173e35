"""Packaging for hoh: the folder mapping pyproject.toml cannot express.

The repository keeps the TFX-template layout (pipeline/, components/, transforms/, ...) at the top
level, but each folder installs under the `hoh` namespace (`hoh.pipeline`, `hoh.components`, ...).
A top-level `import pipeline` would collide with other projects in a shared image; dotted module
paths such as `hoh.trainer.task.run_fn` are also what the compiled Kubeflow pipeline references,
so they must resolve inside the container image exactly as they do in a checkout.
Everything else (name, version, dependencies, the `hoh` command) is in pyproject.toml.
"""

import os

from setuptools import setup

_FOLDERS = {
    "hoh": "hoh",
    "hoh.pipeline": "pipeline",
    "hoh.components": "components",
    "hoh.transforms": "transforms",
    "hoh.trainer": "trainer",
    "hoh.schemas": "schemas",
    "hoh.serving": "serving",
}


def _packages():
    """Every folder with an __init__.py below the mapped roots, as a dotted `hoh.*` name.

    Listing subpackages by hand is how a container image ends up without one of them while the
    editable checkout still works.
    """
    for name, folder in _FOLDERS.items():
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "__"))]
            if "__init__.py" in filenames:
                yield name + dirpath[len(folder) :].replace(os.sep, ".")


setup(package_dir=_FOLDERS, packages=sorted(set(_packages())))
