# cffi_modules cannot be declared in pyproject.toml yet; everything else lives there.
from setuptools import setup

setup(cffi_modules=["native/_build.py:ffibuilder"])
