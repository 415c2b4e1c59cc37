"""tests/conftest.py restores torch's global settings after every test (covers the fixture
``torch_global_settings_restored``): a test that turns on deterministic algorithms does not leak."""

import torch

import dlbook


def test_a_test_may_change_the_settings():
    dlbook.setup()  # turns deterministic algorithms on
    assert torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)


def test_the_next_test_sees_the_defaults_again():
    # runs after the test above on the same worker (pytest keeps the file's order; loadfile keeps
    # one file on one worker)
    assert not torch.are_deterministic_algorithms_enabled()
