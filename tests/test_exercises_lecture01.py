"""Lecture 01 checkers: the right answers pass, the wrong answers learners write are rejected."""

import numpy as np
import torch

from checker_tools import assert_accepts, assert_rejects
from utils.exercises.lecture01 import tiny_experiment
from utils.runtime import set_seed


# --- 01.1: lectures that extend a utils module -----------------------------------------------------

def lectures_using(lectures, module):
    return sorted(lec["number"] for lec in lectures
                  if f"`{module}`" in lec["utils"] or f"`{module}." in lec["utils"])


def test_01_1_accepts_the_solution():
    assert_accepts("01.1", lectures_using)


def test_01_1_rejects_plain_substrings():
    # "trains" (lecture 30) and "language model" (lecture 22) are words, not modules
    assert_rejects("01.1", lambda lectures, module: sorted(
        lec["number"] for lec in lectures if module in lec["utils"]), "is wrong")


def test_01_1_rejects_a_missing_closing_backtick():
    # `moe_extra` (a toy case) starts like `moe, and `mla_rope` (lecture 17) like `mla
    assert_rejects("01.1", lambda lectures, module: sorted(
        lec["number"] for lec in lectures if f"`{module}" in lec["utils"]), "is wrong")


def test_01_1_rejects_forgetting_module_dot_class():
    # lectures 05-08, 10, 11 name `attention.SomeClass`
    assert_rejects("01.1", lambda lectures, module: sorted(
        lec["number"] for lec in lectures if f"`{module}`" in lec["utils"]), "attention")


def test_01_1_rejects_unsorted_and_string_numbers():
    assert_rejects("01.1", lambda lectures, module: [
        lec["number"] for lec in lectures
        if f"`{module}`" in lec["utils"] or f"`{module}." in lec["utils"]], "toy list")
    assert_rejects("01.1", lambda lectures, module: [
        f"{n:02d}" for n in lectures_using(lectures, module)], "is wrong")


# --- 01.2: two identical runs ------------------------------------------------------------------------

def run_twice(seed):
    runs = []
    for _ in range(2):
        set_seed(seed)
        runs.append(tiny_experiment())
    return runs[0], runs[1]


def test_01_2_accepts_seeding_before_each_run():
    assert_accepts("01.2", run_twice)


def test_01_2_rejects_seeding_once():
    def seeded_once(seed):
        set_seed(seed)
        return tiny_experiment(), tiny_experiment()

    assert_rejects("01.2", seeded_once, "result 1")


def test_01_2_rejects_not_seeding_and_seeding_only_numpy():
    assert_rejects("01.2", lambda seed: (tiny_experiment(), tiny_experiment()), "is wrong")

    def numpy_only(seed):
        runs = []
        for _ in range(2):
            np.random.seed(seed)
            runs.append(tiny_experiment())
        return tuple(runs)

    assert_rejects("01.2", numpy_only, "is wrong")


# --- 01.3: a private shuffle -------------------------------------------------------------------------

def shuffle_then_init(n, data_seed):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(data_seed))
    layer = torch.nn.Linear(2, 2)
    return order, layer.weight.detach()


def test_01_3_accepts_the_private_generator():
    assert_accepts("01.3", shuffle_then_init)


def test_01_3_accepts_saving_and_restoring_the_global_state():
    # a correct alternative: shuffle with the global generator inside a fork of its state
    def forked(n, data_seed):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(data_seed)
            order = torch.randperm(n)
        return order, torch.nn.Linear(2, 2).weight.detach()

    assert_accepts("01.3", forked)


def test_01_3_rejects_shuffling_with_the_global_generator():
    def global_shuffle(n, data_seed):
        order = torch.randperm(n)
        return order, torch.nn.Linear(2, 2).weight.detach()

    assert_rejects("01.3", global_shuffle, "is wrong")

    def global_shuffle_seeded(n, data_seed):  # the right order, but the model's draws are used up
        torch.manual_seed(data_seed)
        order = torch.randperm(n)
        return order, torch.nn.Linear(2, 2).weight.detach()

    assert_rejects("01.3", global_shuffle_seeded, "result 1")


def test_01_3_rejects_reseeding_after_a_global_shuffle():
    def reseeded(n, data_seed):
        set_seed(data_seed)
        order = torch.randperm(n)
        set_seed(data_seed)  # "repairs" the stream, but with the data seed, not the model's
        return order, torch.nn.Linear(2, 2).weight.detach()

    assert_rejects("01.3", reseeded, "result 1")


def test_01_3_rejects_a_generator_that_is_not_passed_or_not_seeded():
    def unused_generator(n, data_seed):
        g = torch.Generator().manual_seed(data_seed)  # created, then forgotten
        order = torch.randperm(n)
        return order, torch.nn.Linear(2, 2).weight.detach()

    assert_rejects("01.3", unused_generator, "is wrong")

    def unseeded_generator(n, data_seed):
        order = torch.randperm(n, generator=torch.Generator())
        return order, torch.nn.Linear(2, 2).weight.detach()

    assert_rejects("01.3", unseeded_generator, "result 0")


def test_01_3_rejects_seeding_the_model_with_the_data_seed():
    # the old exercise's recipe: set_seed(seed) first, then a private shuffle
    def old_recipe(n, data_seed):
        set_seed(data_seed)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(data_seed))
        return order, torch.nn.Linear(2, 2).weight.detach()

    assert_rejects("01.3", old_recipe, "result 1")
