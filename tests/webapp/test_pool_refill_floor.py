"""A refill that samples at all samples a full generation batch (a shortfall of 1-2 cards costs
nearly a batch's decoding steps anyway), and the pool ends above its target by less than a batch;
a pool smaller than a batch is filled to its target, never above it."""

import pytest

from webapp.annotation import selectors
from webapp.annotation import services as annotation_services
from webapp.annotation.services import GENERATION_BATCH


def test_a_refill_of_a_one_card_shortfall_samples_a_full_batch(project):
    project.pool_target = GENERATION_BATCH
    project.save(update_fields=["pool_target"])
    assert annotation_services.completion_pool_refill(project=project, max_new=GENERATION_BATCH - 1, seed=1) == GENERATION_BATCH - 1
    assert selectors.pool_free(project=project) == GENERATION_BATCH - 1  # one card short of the target
    assert annotation_services.completion_pool_refill(project=project, seed=2) == GENERATION_BATCH
    assert selectors.pool_free(project=project) == 2 * GENERATION_BATCH - 1  # above the target by less than a batch
    assert annotation_services.completion_pool_refill(project=project, seed=3) == 0  # full: nothing sampled


def test_a_pool_smaller_than_a_batch_is_filled_to_its_target_and_never_above_it(project):
    # The floor of a whole pool's worth took a pool of 4 to 7.
    assert project.pool_target == 4 < GENERATION_BATCH
    assert annotation_services.completion_pool_refill(project=project, max_new=3, seed=1) == 3
    assert annotation_services.completion_pool_refill(project=project, seed=2) == 1
    assert selectors.pool_free(project=project) == 4
    assert annotation_services.completion_pool_refill(project=project, seed=3) == 0


@pytest.mark.parametrize(
    ("target", "free", "fill_to"),
    [
        (GENERATION_BATCH - 1, GENERATION_BATCH - 2, GENERATION_BATCH - 1),  # below a batch: the target
        (GENERATION_BATCH, GENERATION_BATCH - 1, 2 * GENERATION_BATCH - 1),  # a batch: target + batch - 1 at most
        (4 * GENERATION_BATCH, 0, 4 * GENERATION_BATCH),  # a large deficit: the target
        (4 * GENERATION_BATCH, 4 * GENERATION_BATCH - 3, 5 * GENERATION_BATCH - 3),  # a small one: a full batch
        (4 * GENERATION_BATCH, 4 * GENERATION_BATCH, 4 * GENERATION_BATCH),  # full: nothing
        (4 * GENERATION_BATCH, 5 * GENERATION_BATCH, 4 * GENERATION_BATCH),  # above the target: nothing
    ],
)
def test_the_refill_floor_is_a_full_batch_only_for_a_pool_of_at_least_a_batch(target, free, fill_to):
    assert annotation_services._refill_target(target=target, free=free) == fill_to


def test_an_empty_pool_refills_to_its_target_only(project):
    project.pool_target = 12
    project.save(update_fields=["pool_target"])
    assert annotation_services.completion_pool_refill(project=project, seed=1) == 12


def test_max_new_still_caps_a_refill(project):
    project.pool_target = GENERATION_BATCH
    project.save(update_fields=["pool_target"])
    annotation_services.completion_pool_refill(project=project, max_new=GENERATION_BATCH - 1, seed=1)
    assert annotation_services.completion_pool_refill(project=project, max_new=2, seed=2) == 2
