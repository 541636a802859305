"""The pytest plugin, driven through pytester: options, ids, sweeps, refusals."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

NO_LAB = """
def test_n(n_guests):
    assert n_guests in (1, 2, 4)

def test_plain():
    pass
"""


def test_sweep_ids(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(NO_LAB)
    res = pytester.runpytest_subprocess("--guests=1,2,4", "--collect-only", "-q")
    res.stdout.fnmatch_lines(["*test_n[[]n=1[]]", "*test_n[[]n=2[]]", "*test_n[[]n=4[]]",
                              "*test_plain"])
    assert res.ret == 0


def test_single_n_is_one_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_n(n_guests):\n    assert n_guests == 16\n")
    res = pytester.runpytest_subprocess("--guests=16")
    res.assert_outcomes(passed=1)


def test_pyproject_defaults(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", pyproject='[tool.scalelab]\nguests = "3,5"\n')
    pytester.makepyfile("def test_n(n_guests):\n    assert n_guests in (3, 5)\n")
    res = pytester.runpytest_subprocess("-q")
    res.assert_outcomes(passed=2)


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("--guests=abc", "*scalelab: --guests='abc': 'abc' is not a whole number*"),
        ("--guests=0", "*at least 1*"),
        ("--guests=1,,4", "*empty entry*"),
        ("--backend=vmware", "*unknown backend 'vmware'*"),
        ("--report-tz=Nowhere/Atlantis", "*Nowhere/Atlantis*"),
        ("--ssh-concurrency=-1", "*ssh-concurrency*"),
    ],
)
def test_usage_errors(pytester: pytest.Pytester, arg: str, message: str) -> None:
    pytester.makepyfile(NO_LAB)
    res = pytester.runpytest_subprocess(arg)
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([message])
    assert "Traceback" not in res.stderr.str()


def test_refuses_xdist(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(NO_LAB)
    res = pytester.runpytest_subprocess("-p", "xdist", "-n", "2")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*do not run scenarios under pytest-xdist*"])


def test_options_are_listed(pytester: pytest.Pytester) -> None:
    res = pytester.runpytest_subprocess("--help")
    res.stdout.fnmatch_lines(["scalelab: guests, backend, report:", "*--guests=GUESTS*",
                              "*--report-tz=REPORT_TZ*", "*--keep-guests*"])
