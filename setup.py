"""Packaging for hoh.

The repository keeps the TFX-template layout (pipeline/, components/, transforms/, ...) at the top
level, but each folder installs under the `hoh` namespace (`hoh.pipeline`, `hoh.components`, ...).
A top-level `import pipeline` would collide with other projects in a shared image; dotted module
paths such as `hoh.trainer.task.run_fn` are also what the compiled Kubeflow pipeline references,
so they must resolve inside the container image exactly as they do in a checkout.
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
                yield name + dirpath[len(folder):].replace(os.sep, ".")


setup(
    name="hoh",
    version="0.1.0",
    description="TFX pipeline from raw images to an image classifier served by NVIDIA Triton.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.12",
    package_dir=_FOLDERS,
    packages=sorted(set(_packages())),
    package_data={
        "hoh.configs": ["*.yaml"],
        "hoh.schemas": ["*.pbtxt"],
        "hoh.serving": ["*.py"],
    },
    # The exact versions live in requirements.lock (installed by `make`); these are the ranges
    # the code is written against, so a plain `pip install .` cannot pick an incompatible stack.
    install_requires=[
        "tfx==1.16.0",
        "tensorflow==2.16.2",
        "tf-keras==2.16.0",
        "tensorflow-transform==1.16.0",
        "tensorflow-data-validation==1.16.1",
        "tensorflow-model-analysis==0.47.1",
        "apache-beam[gcp]==2.59.0",
        "kfp>=2.13,<2.14",
        "tritonclient[all]==2.51.0",
        "nvidia-pytriton==0.7.0",
        "evidently==0.7.23",
        "dill",
        "numpy<2",
        "pillow",
        "pyyaml",
        "pydantic>=2",
    ],
    entry_points={"console_scripts": ["hoh=hoh.cli:main"]},
)
