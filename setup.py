"""The one compiled part of dbgcli: an optional extension (``dbgcli.torch._fused``) that
reduces float32 tensors in one pass each. Everything else is in pyproject.toml.

It is optional: where it does not build (no C compiler), dbgcli installs without it and the
PyTorch hook computes the same statistics with torch operations, only more slowly. On Linux,
where the compiler takes OpenMP, it can share a step's tensors out among torch's own threads
(see dbgcli/torch/_fused.c); elsewhere it reduces them on the calling thread.
"""

import os
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptimisedBuild(build_ext):
    """``-O3`` for compilers that take it (gcc, clang, MinGW); MSVC's release flags stand.
    OpenMP only on Linux, whose torch wheels bring the libgomp.so.1 the kernel then shares:
    elsewhere torch's runtime (libomp on macOS, Intel's or MSVC's on Windows) is not one a
    ``-fopenmp`` build links to, and a second runtime is of no use to the kernel."""

    def build_extensions(self) -> None:
        if self.compiler.compiler_type != "msvc":
            linux = sys.platform.startswith("linux") and self.compiler.compiler_type == "unix"
            openmp = ["-fopenmp"] if linux and self._links("-fopenmp") else []
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
            except Exception:  # noqa: BLE001 - any failure: build without OpenMP
                return False
        return True


setup(
    ext_modules=[
        Extension("dbgcli.torch._fused", sources=["dbgcli/torch/_fused.c"], optional=True)
    ],
    cmdclass={"build_ext": OptimisedBuild},
)
