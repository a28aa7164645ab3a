"""The one compiled part of dbgcli: an optional extension (``dbgcli.torch._fused``) that
reduces float32 tensors in one pass each. Everything else is in pyproject.toml.

It is optional: where it does not build (no C compiler), dbgcli installs without it and the
PyTorch hook computes the same statistics with torch operations, only more slowly. Where the
compiler takes OpenMP (gcc, and clang where libomp is installed), it shares a step's tensors
out among torch's threads; elsewhere it reduces them on the calling thread.
"""

import os
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, LinkError


class OptimisedBuild(build_ext):
    """``-O3`` and OpenMP for compilers that take them (gcc, clang, MinGW); MSVC's release
    flags stand, without OpenMP (its runtime is not the one torch's threads belong to)."""

    def build_extensions(self) -> None:
        if self.compiler.compiler_type != "msvc":
            openmp = ["-fopenmp"] if self._links("-fopenmp") else []
            for extension in self.extensions:
                extension.extra_compile_args = ["-O3", *openmp]
                extension.extra_link_args = openmp
        super().build_extensions()

    def _links(self, flag: str) -> bool:
        """Whether a shared object using OpenMP compiles and links with ``flag``."""
        with tempfile.TemporaryDirectory() as folder:
            source = os.path.join(folder, "probe.c")
            with open(source, "w") as probe:
                probe.write("#include <omp.h>\nint probe(void) { return omp_get_max_threads(); }\n")
            try:
                objects = self.compiler.compile([source], output_dir=folder, extra_postargs=[flag])
                self.compiler.link_shared_object(
                    objects, os.path.join(folder, "probe.so"), extra_postargs=[flag]
                )
            except (CCompilerError, CompileError, LinkError):
                return False
        return True


setup(
    ext_modules=[
        Extension("dbgcli.torch._fused", sources=["dbgcli/torch/_fused.c"], optional=True)
    ],
    cmdclass={"build_ext": OptimisedBuild},
)
