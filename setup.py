"""Packaging for cellseg-d2.

detectron2 is declared but has no PyPI release: ``make install`` (tools/install.sh) builds it
from upstream against the installed torch before installing this package, so pip finds the
requirement already satisfied.
"""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="cellseg-d2",
    version="0.1.0",
    description="Detectron2-based multi-class cell instance segmentation for microscopy images",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["cellseg_d2", "cellseg_d2.*"]),
    python_requires=">=3.10",
    install_requires=[
        "detectron2",
        "torch>=2.0",
        "torchvision",
        "fvcore>=0.1.5,<0.1.6",
        "iopath>=0.1.7,<0.1.10",
        "pycocotools>=2.0.2",
        "opencv-python-headless",
        "albumentations>=2.0",
        "tifffile",
        "imagecodecs",
        # whole-slide reading (cellseg_d2/data/slide.py): the OpenSlide library itself ships as
        # the openslide-bin wheel, so no system package (apt, brew) is needed; openslide-python
        # finds it from 1.4 on, and OpenSlide 4 is the first to read DICOM WSI.
        "openslide-python>=1.4",
        "openslide-bin>=4",
        "numpy",
        "scipy",
        "scikit-image",
        "shapely>=2.0",
        "tqdm",
    ],
    extras_require={
        # running exported ONNX models (tools/export_model.py --format onnx writes them)
        "export": ["onnx", "onnxruntime"],
        # the tests export and run ONNX models too
        "dev": ["pytest>=7", "pytest-timeout>=2", "ruff>=0.6", "packaging", "onnx", "onnxruntime"],
    },
)
