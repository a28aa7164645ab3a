"""The hook keeps freed heap memory for the next step (glibc's thresholds, dbgcli.torch._malloc).

malloc's settings belong to the process, so each case runs in a fresh interpreter: it attaches
to a model on the CPU, then frees a 20 MiB block and asks glibc (mallinfo2) how much free
memory it keeps at the top of its heap. With glibc's start-up thresholds the block is a mapping
of its own, returned at once; with the hook's, it is heap memory kept for the next allocation.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from dbgcli.torch._malloc import user_chose_malloc

LIBC, LIBC_VERSION = platform.libc_ver()
pytestmark = pytest.mark.skipif(
    sys.platform != "linux"
    or LIBC != "glibc"
    or tuple(int(part) for part in LIBC_VERSION.split(".")[:2]) < (2, 33),
    reason="glibc's malloc, with mallinfo2 (glibc 2.33)",
)

KEPT_AFTER_FREE = """
import ctypes, sys
import torch
from torch import nn
from dbgcli.torch import attach

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
model = nn.Linear(4, 2).to(sys.argv[2])
with attach(model, torch.optim.SGD(model.parameters(), lr=0.1), sys.argv[1]):
    size = 20 << 20
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    print(libc.mallinfo2().keepcost >= size)
"""


def kept_after_free(tmp_path: Path, device: str = "cpu", **environment: str) -> bool:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MALLOC_")
        and name not in ("DBG_MALLOC", "GLIBC_TUNABLES", "LD_PRELOAD")  # glibc's malloc here
    }
    result = subprocess.run(
        [sys.executable, "-c", KEPT_AFTER_FREE, str(tmp_path / "run.h5"), device],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**env, **environment},
    )
    return {"True": True, "False": False}[result.stdout.strip()]


def test_attaching_to_a_cpu_model_keeps_freed_memory_for_the_next_step(tmp_path: Path) -> None:
    assert kept_after_free(tmp_path)


def test_dbg_malloc_system_leaves_malloc_alone(tmp_path: Path) -> None:
    assert not kept_after_free(tmp_path, DBG_MALLOC="system")


@pytest.mark.parametrize(
    "environment",
    [
        {"DBG_MALLOC": "system"},
        {"DBG_MALLOC": " System "},
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"MALLOC_TOP_PAD_": "0"},
        {"MALLOC_MMAP_MAX_": "65536"},
        {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:glibc.malloc.mmap_threshold=262144"},
    ],
)
def test_a_malloc_setting_in_the_environment_is_the_users_choice(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str]
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert user_chose_malloc()


def test_settings_other_than_the_thresholds_are_not_that_choice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [n for n in os.environ if n.startswith("MALLOC_")] + ["GLIBC_TUNABLES"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DBG_MALLOC", "")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    monkeypatch.setenv(
        "GLIBC_TUNABLES", "glibc.malloc.arena_max=2:glibc.rtld.optional_static_tls=512"
    )
    assert not user_chose_malloc()


def test_a_model_off_the_cpu_leaves_malloc_alone(tmp_path: Path) -> None:
    assert not kept_after_free(tmp_path, device="meta")
