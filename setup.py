"""Distribution `latentbeam`: Keras autoencoder anomaly scoring for Apache Beam."""
import os

from setuptools import find_packages, setup

_HERE = os.path.dirname(os.path.abspath(__file__))
_README = os.path.join(_HERE, "README.md")

_DASK = ["dask>=2024.4.2,<2027", "distributed>=2024.4.2,<2027"]

setup(
    name="latentbeam",
    version="0.1.0",
    description="Keras autoencoder training and Apache Beam batch/streaming anomaly scoring",
    # Beam's --setup_file builds an sdist on the launcher and installs it on workers;
    # do not fail there if the README was not packaged.
    long_description=open(_README, encoding="utf-8").read() if os.path.exists(_README) else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["latentbeam", "latentbeam.*"]),
    package_data={"latentbeam.pipeline": ["providers.yaml"]},
    install_requires=[
        "tensorflow>=2.18,<2.22",
        "keras>=3.6,<4",
        "apache-beam>=2.60,<3",
        "pyarrow>=16,<26",
        "tensorflow-datasets>=4.9.7,<5",
        # tensorflow-datasets 4.9.x imports it but does not declare it.
        "importlib_resources>=6",
        "numpy>=1.26,<3",
        "PyYAML>=6,<7",
        "scikit-learn>=1.4,<2",
        # `latentbeam report`: PNG plots (Agg backend, no display needed).
        "matplotlib>=3.8,<4",
        # Beam YAML (`python -m apache_beam.yaml.main`, the latentbeam YAML provider) and
        # Beam DataFrames import these; the ranges are Beam 2.77's own ([yaml] extra),
        # pandas below 2.4 because Beam's DataFrame API fails to import with pandas 3.
        "jsonschema>=4,<5",
        "jinja2>=3,<3.2",
        "docstring-parser>=0.15,<1",
        "pandas>=2,<2.4",
    ],
    extras_require={
        # `train.tensorboard_dir`: TensorFlow no longer pulls TensorBoard in.
        "tensorboard": ["tensorboard>=2.18,<3"],
        # `--runner dask`: what apache-beam[dask] installs (Beam 2.77 asks for >=2024.4.2).
        "dask": _DASK,
        "test": ["pytest>=8,<10", "duckdb>=1.1,<3", "pandas>=2,<4", "tensorboard>=2.18,<3",
                 "hypothesis>=6.100,<7"] + _DASK,
    },
    entry_points={"console_scripts": ["latentbeam=latentbeam.cli:main"]},
)
