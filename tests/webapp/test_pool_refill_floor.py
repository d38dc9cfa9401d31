"""A refill that samples at all samples a full generation batch (a shortfall of 1-2 cards costs
nearly a batch's decoding steps anyway), and the pool ends above its target by less than a batch."""

from webapp.annotation import selectors
from webapp.annotation import services as annotation_services
from webapp.annotation.services import GENERATION_BATCH


def test_a_refill_of_a_one_card_shortfall_samples_a_full_batch(project):
    project.pool_target = GENERATION_BATCH
    project.save(update_fields=["pool_target"])
    assert annotation_services.completion_pool_refill(project=project, max_new=GENERATION_BATCH - 1, seed=1) == 7
    assert selectors.pool_free(project=project) == GENERATION_BATCH - 1  # one card short of the target
    assert annotation_services.completion_pool_refill(project=project, seed=2) == GENERATION_BATCH
    assert selectors.pool_free(project=project) == 2 * GENERATION_BATCH - 1  # above the target by less than a batch
    assert annotation_services.completion_pool_refill(project=project, seed=3) == 0  # full: nothing sampled


def test_a_pool_smaller_than_a_batch_refills_a_whole_pool(project):
    assert project.pool_target == 4 < GENERATION_BATCH
    assert annotation_services.completion_pool_refill(project=project, max_new=3, seed=1) == 3
    assert annotation_services.completion_pool_refill(project=project, seed=2) == 4
    assert selectors.pool_free(project=project) == 7


def test_an_empty_pool_refills_to_its_target_only(project):
    project.pool_target = 12
    project.save(update_fields=["pool_target"])
    assert annotation_services.completion_pool_refill(project=project, seed=1) == 12


def test_max_new_still_caps_a_refill(project):
    project.pool_target = GENERATION_BATCH
    project.save(update_fields=["pool_target"])
    annotation_services.completion_pool_refill(project=project, max_new=GENERATION_BATCH - 1, seed=1)
    assert annotation_services.completion_pool_refill(project=project, max_new=2, seed=2) == 2
