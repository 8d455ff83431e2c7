# Everything is in setup.cfg and pyproject.toml. This file exists for Apache Beam's
# `--setup_file=./setup.py` (Dataflow installs the project on its workers from it: BUILD.md).
import setuptools

setuptools.setup()
