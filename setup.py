"""The one compiled part of dbgcli: an optional extension (``dbgcli.torch._fused``) that
reduces float32 tensors in one pass each. Everything else is in pyproject.toml.

It is optional: where it does not build (no C compiler), dbgcli installs without it and the
PyTorch hook computes the same statistics with torch operations, only more slowly.
"""

import sys

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dbgcli.torch._fused",
            sources=["dbgcli/torch/_fused.c"],
            extra_compile_args=["/O2"] if sys.platform == "win32" else ["-O3"],
            optional=True,
        )
    ]
)
