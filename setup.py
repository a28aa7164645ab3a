"""The one compiled part of dbgcli: an optional extension (``dbgcli.torch._fused``) that
reduces float32 tensors in one pass each. Everything else is in pyproject.toml.

It is optional: where it does not build (no C compiler), dbgcli installs without it and the
PyTorch hook computes the same statistics with torch operations, only more slowly.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptimisedBuild(build_ext):
    """``-O3`` for compilers that take it (gcc, clang, MinGW); MSVC's release flags stand."""

    def build_extensions(self) -> None:
        if self.compiler.compiler_type != "msvc":
            for extension in self.extensions:
                extension.extra_compile_args = ["-O3"]
        super().build_extensions()


setup(
    ext_modules=[
        Extension("dbgcli.torch._fused", sources=["dbgcli/torch/_fused.c"], optional=True)
    ],
    cmdclass={"build_ext": OptimisedBuild},
)
