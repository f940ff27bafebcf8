# cffi_modules has no pyproject.toml spelling yet; everything else lives there.
from setuptools import setup

setup(cffi_modules=["txuring/_build.py:ffibuilder"])
