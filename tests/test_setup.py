"""How setup.py picks what to build, and that a build without torch stops at once with the fix."""
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("lenet_ext_setup", ROOT / "setup.py")
setup_py = importlib.util.module_from_spec(spec)
spec.loader.exec_module(setup_py)  # not __main__: defines the functions, builds nothing


def with_headers(found):
    return lambda cuda_home: found


@pytest.mark.parametrize("torch_cuda, cuda_home, headers, expected, reason", [
    ("12.8", "/usr/local/cuda", True, "cuda", "has its headers"),
    (None, "/usr/local/cuda", True, "cpu", "torch was built without CUDA"),
    ("12.8", None, True, "cpu", "no CUDA toolkit"),
    ("12.8", "/usr/local/cuda", False, "cpu", "no cuda_runtime.h"),
])
def test_cuda_only_with_a_cuda_torch_and_the_toolkit_headers(torch_cuda, cuda_home, headers,
                                                              expected, reason):
    kernels, why = setup_py.choose_kernels(None, torch_cuda, cuda_home, with_headers(headers))
    assert kernels == expected
    assert reason in why


@pytest.mark.parametrize("forced, expected", [("0", "cpu"), ("emulated", "emulated")])
def test_forced_choices(forced, expected):
    assert setup_py.choose_kernels(forced, "12.8", "/usr/local/cuda", with_headers(True))[0] == expected


@pytest.mark.parametrize("torch_cuda, cuda_home, headers, reason", [
    (None, "/usr/local/cuda", True, "built without CUDA"),
    ("12.8", "/usr/local/cuda", False, "no cuda_runtime.h"),
])
def test_forcing_cuda_that_cannot_build_stops_with_the_reason(torch_cuda, cuda_home, headers,
                                                              reason):
    with pytest.raises(SystemExit, match=f"LENET_EXT_CUDA=1, but .*{reason}"):
        setup_py.choose_kernels("1", torch_cuda, cuda_home, with_headers(headers))


def test_an_unknown_choice_is_refused():
    with pytest.raises(SystemExit, match="must be 1, 0 or emulated, not 'yes'"):
        setup_py.choose_kernels("yes", None, None)


def test_headers_are_looked_for_where_toolkits_keep_them(tmp_path):
    assert not setup_py.cuda_headers_found(str(tmp_path))
    (tmp_path / "targets" / "x86_64-linux" / "include").mkdir(parents=True)
    (tmp_path / "targets" / "x86_64-linux" / "include" / "cuda_runtime.h").touch()
    assert setup_py.cuda_headers_found(str(tmp_path))


def run_setup(*args, block_torch=False):
    """setup.py as pip runs it (as __main__), in a child process; torch unimportable if asked,
    as in pip's isolated build environment."""
    code = ("import runpy, sys\n"
            + ("sys.modules['torch'] = None\n" if block_torch else "")
            + f"sys.argv = ['setup.py', *{list(args)!r}]\n"
            "runpy.run_path('setup.py', run_name='__main__')\n")
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    return result, time.monotonic() - start


def test_without_torch_the_build_stops_at_once_naming_the_fix():
    result, seconds = run_setup("bdist_wheel", block_torch=True)
    assert result.returncode != 0
    assert "torch is not importable" in result.stderr
    assert "pip install --no-build-isolation ." in result.stderr
    assert seconds < 30  # no compile started


def test_the_build_says_in_one_line_which_kernels_and_why():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    _, reason = setup_py.choose_kernels(os.environ.get("LENET_EXT_CUDA"), torch.version.cuda,
                                        CUDA_HOME)
    result, _ = run_setup("--name")  # configures the build, compiles nothing
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("lenet_ext: building")]
    assert len(lines) == 1 and lines[0].endswith(f" kernels: {reason}"), result.stderr
