"""The suite's scheduling in tests/conftest.py: the slowest-first file list stays true to the files on disk, and
collection follows it while keeping each file's own test order."""

import types
from pathlib import Path

import conftest


def test_the_slowest_first_list_names_existing_test_files_once():
    here = Path(__file__).parent
    assert len(set(conftest.SLOWEST_FILES_FIRST)) == len(conftest.SLOWEST_FILES_FIRST)
    missing = [name for name in conftest.SLOWEST_FILES_FIRST if not (here / name).is_file()]
    assert not missing, f"listed in conftest.SLOWEST_FILES_FIRST but not in tests/: {missing}"


def test_collection_puts_listed_files_first_in_list_order_and_keeps_each_files_order():
    first, second = conftest.SLOWEST_FILES_FIRST[:2]
    names = ["test_zzz_unlisted.py::a", f"{second}::a", f"{first}::a", "test_aaa_unlisted.py::a", f"{second}::b",
             f"{first}::b"]
    items = [types.SimpleNamespace(path=Path("tests") / name.split("::")[0], name=name) for name in names]
    conftest.pytest_collection_modifyitems(None, items)
    assert [item.name for item in items] == [f"{first}::a", f"{first}::b", f"{second}::a", f"{second}::b",
                                             "test_zzz_unlisted.py::a", "test_aaa_unlisted.py::a"]
