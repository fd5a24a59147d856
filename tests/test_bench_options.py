"""The benchmark scripts' shared argument types (benchmarks/bench_options.py): a bad value is refused by argparse
before any work starts, with the reason."""

import argparse
import importlib.util
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
_SPEC = importlib.util.spec_from_file_location("bench_options", BENCHMARKS / "bench_options.py")
bench_options = importlib.util.module_from_spec(_SPEC)  # loaded by path: the benchmarks folder stays off sys.path
_SPEC.loader.exec_module(bench_options)
at_least, comma_list, device_name, header = (bench_options.at_least, bench_options.comma_list,
                                             bench_options.device_name, bench_options.header)


@pytest.mark.parametrize("parse, text, expected", [
    (at_least(1), "3", 3), (at_least(0), "0", 0), (at_least(0, float), "0.5", 0.5),
    (comma_list(at_least(2)), "10, 20", [10, 20]), (comma_list(str), "a,b", ["a", "b"]), (device_name, "cpu", "cpu"),
])
def test_good_values_parse(parse, text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize("parse, text, said", [
    (at_least(1), "0", "must be an integer of at least 1, got '0'"), (at_least(1), "1.5", "expected an integer"),
    (at_least(0, float), "nan", "must be a finite number of at least 0"), (at_least(0, float), "-1", "at least 0"),
    (at_least(0, float), "x", "expected a number, got 'x'"), (comma_list(at_least(2)), "10,", "separated by commas"),
    (comma_list(at_least(2)), "10,1", "at least 2, got '1'"), (device_name, "tpu", "unknown device 'tpu'"),
])
def test_bad_values_are_refused_with_the_reason(parse, text, said):
    with pytest.raises(argparse.ArgumentTypeError, match=said.replace("(", r"\(")):
        parse(text)


def test_the_header_names_the_machine_its_cores_threads_and_the_date():
    import torch

    line = header("msifusion speed")
    assert line.startswith("# msifusion speed, ") and line.endswith(
        f"CPU cores, {torch.get_num_threads()} threads, {date.today()}")


def test_a_script_refuses_an_unknown_task_before_any_work():
    run = subprocess.run([sys.executable, str(BENCHMARKS / "bench_speed.py"), "--tasks", "ginkgo,ginko"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "unknown task(s) 'ginko'" in run.stderr and not run.stdout
    spaced = subprocess.run([sys.executable, str(BENCHMARKS / "bench_speed.py"), "--tasks", "ginkgo, nope"],
                            capture_output=True, text=True, timeout=60)  # spaces after commas, as every list takes
    assert spaced.returncode == 2 and "unknown task(s) 'nope'" in spaced.stderr
