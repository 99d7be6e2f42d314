"""Named class subsets for config.data.classes / data.eval_classes (ssl_jax.data.sources).

FUSSL's cross-class experiment (seed 000, Table 4, Cases 4/5) pre-trains on 50 CIFAR-100 classes
"across all superclasses" and evaluates (linear probe) on "the other 50 classes (still in all 20
superclasses)". `cifar100_cross_class_split` gives that split from CIFAR-100's fine -> coarse
table, which is kept here (`CIFAR100_SUPERCLASSES`) so that the split needs no data;
`fine_to_coarse_from_data` derives the same table from a prepared TFDS ``cifar100`` (its
'label' and 'coarse_label' features) to check it. `CROSS_CLASS_SPLITS` names the split of every
dataset a cross-class preset uses (configs/fussl.py).
"""
from typing import Optional, Sequence, Tuple

import numpy as np

# CIFAR-100's 20 superclasses (coarse labels 0..19, TFDS 'coarse_label', in the dataset's
# alphabetical order) and their 5 fine classes each (TFDS 'label' ids, alphabetical fine names),
# as the dataset's meta file lists them.
CIFAR100_SUPERCLASSES = (
    ("aquatic_mammals", (4, 30, 55, 72, 95)),          # beaver dolphin otter seal whale
    ("fish", (1, 32, 67, 73, 91)),                     # aquarium_fish flatfish ray shark trout
    ("flowers", (54, 62, 70, 82, 92)),                 # orchid poppy rose sunflower tulip
    ("food_containers", (9, 10, 16, 28, 61)),          # bottle bowl can cup plate
    ("fruit_and_vegetables", (0, 51, 53, 57, 83)),     # apple mushroom orange pear sweet_pepper
    ("household_electrical_devices", (22, 39, 40, 86, 87)),  # clock keyboard lamp telephone television
    ("household_furniture", (5, 20, 25, 84, 94)),      # bed chair couch table wardrobe
    ("insects", (6, 7, 14, 18, 24)),                   # bee beetle butterfly caterpillar cockroach
    ("large_carnivores", (3, 42, 43, 88, 97)),         # bear leopard lion tiger wolf
    ("large_man-made_outdoor_things", (12, 17, 37, 68, 76)),  # bridge castle house road skyscraper
    ("large_natural_outdoor_scenes", (23, 33, 49, 60, 71)),   # cloud forest mountain plain sea
    ("large_omnivores_and_herbivores", (15, 19, 21, 31, 38)),  # camel cattle chimpanzee elephant kangaroo
    ("medium_mammals", (34, 63, 64, 66, 75)),          # fox porcupine possum raccoon skunk
    ("non-insect_invertebrates", (26, 45, 77, 79, 99)),  # crab lobster snail spider worm
    ("people", (2, 11, 35, 46, 98)),                   # baby boy girl man woman
    ("reptiles", (27, 29, 44, 78, 93)),                # crocodile dinosaur lizard snake turtle
    ("small_mammals", (36, 50, 65, 74, 80)),           # hamster mouse rabbit shrew squirrel
    ("trees", (47, 52, 56, 59, 96)),                   # maple_tree oak_tree palm_tree pine_tree willow_tree
    ("vehicles_1", (8, 13, 48, 58, 90)),               # bicycle bus motorcycle pickup_truck train
    ("vehicles_2", (41, 69, 81, 85, 89)),              # lawn_mower rocket streetcar tank tractor
)


def _table(superclasses) -> Tuple[int, ...]:
    out = [-1] * sum(len(fine) for _, fine in superclasses)
    for coarse, (_, fine) in enumerate(superclasses):
        for f in fine:
            out[f] = coarse
    return tuple(out)


CIFAR100_FINE_TO_COARSE = _table(CIFAR100_SUPERCLASSES)  # fine id -> superclass id, 100 entries


def check_fine_to_coarse(fine_to_coarse: Sequence[int]) -> np.ndarray:
    """The table as int64 [F], checked: coarse ids 0..C-1 all used, each with at least two fine
    classes (a cross-class split puts each superclass on both sides)."""
    table = np.asarray(fine_to_coarse)
    if table.ndim != 1 or table.size == 0 or not np.issubdtype(table.dtype, np.integer) or table.min() < 0:
        raise ValueError(f"fine_to_coarse must list one superclass id >= 0 per fine class; got {fine_to_coarse!r}.")
    counts = np.bincount(table)
    if counts.min() < 2:
        raise ValueError(f"fine_to_coarse: superclasses {np.flatnonzero(counts < 2).tolist()} have fewer than two "
                         "fine classes (or none): a split cannot put each superclass on both sides.")
    return table.astype(np.int64)


def superclass_split(fine_to_coarse: Sequence[int]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(pre-training classes, evaluation classes): disjoint, together every fine class, every
    superclass on both sides. Within superclass c the fine classes are ranked by id; rank r goes to
    pre-training iff r is even for the first half of the superclasses (c < C/2) and odd for the
    rest. With CIFAR-100's 20 x 5 that is 3 + 2 classes per superclass, 10 x 3 + 10 x 2 = 50 a side.

    Why this rule (the paper does not give its split; 5 classes cannot be halved): it depends on
    the public table alone, so anyone recomputes it; alternating ranks spreads each side over the
    alphabet instead of taking the first names; swapping the 3/2 majority at the half balances
    the sides exactly."""
    table = check_fine_to_coarse(fine_to_coarse)
    num_coarse = int(table.max()) + 1
    pretrain, evaluate = [], []
    for c in range(num_coarse):
        for rank, fine in enumerate(np.flatnonzero(table == c)):
            (pretrain if (rank % 2 == 0) == (c < num_coarse / 2) else evaluate).append(int(fine))
    return tuple(sorted(pretrain)), tuple(sorted(evaluate))


def cifar100_cross_class_split(fine_to_coarse: Sequence[int] = CIFAR100_FINE_TO_COARSE):
    """FUSSL's Table 4 split of CIFAR-100: (50 pre-training fine classes, the other 50), all 20
    superclasses on both sides (`superclass_split`). `fine_to_coarse`: the table in code, or
    `fine_to_coarse_from_data(...)` of a prepared cifar100."""
    table = check_fine_to_coarse(fine_to_coarse)
    if table.size != 100 or int(table.max()) != 19:
        raise ValueError(f"cifar100_cross_class_split needs CIFAR-100's 100 fine -> 20 coarse table; got {table.size} "
                         f"fine classes in {int(table.max()) + 1} superclasses.")
    return superclass_split(table)


def fine_to_coarse_from_labels(fine, coarse, num_fine: Optional[int] = None) -> Tuple[int, ...]:
    """The fine -> coarse table of paired label arrays; ValueError if a fine class has two
    superclasses or never occurs."""
    fine, coarse = np.asarray(fine, np.int64).reshape(-1), np.asarray(coarse, np.int64).reshape(-1)
    if fine.shape != coarse.shape or fine.size == 0:
        raise ValueError(f"fine_to_coarse_from_labels: {fine.size} fine and {coarse.size} coarse labels.")
    num_fine = int(fine.max()) + 1 if num_fine is None else int(num_fine)
    pairs = np.unique(np.stack([fine, coarse], 1), axis=0)  # each (fine, coarse) pair once
    count = np.bincount(pairs[:, 0], minlength=num_fine)
    ambiguous, missing = np.flatnonzero(count > 1), np.flatnonzero(count == 0)
    if ambiguous.size or missing.size:
        raise ValueError(f"The labels give no fine -> coarse table: fine classes {ambiguous.tolist()} have several "
                         f"superclasses, {missing.tolist()} never occur.")
    table = np.empty(num_fine, np.int64)
    table[pairs[:, 0]] = pairs[:, 1]
    return tuple(int(c) for c in table)


def fine_to_coarse_from_data(dataset: str = "cifar100", split: str = "train",
                             data_dir: Optional[str] = None) -> Tuple[int, ...]:
    """The table read from a prepared TFDS dataset's 'label' and 'coarse_label' features (one
    label-only pass; sources' clear error when the dataset is not prepared in data_dir)."""
    from ssl_jax.data import sources

    cols = sources.label_columns(dataset, split, data_dir, ("label", "coarse_label"))
    num_fine = sources.dataset_info(dataset, split, data_dir)["num_classes"]
    return fine_to_coarse_from_labels(cols["label"], cols["coarse_label"], num_fine)


# (pre-training classes, evaluation classes) of each dataset a cross-class preset uses.
# cifar10: the first five classes (airplane automobile bird cat deer) against the other five (dog
# frog horse ship truck): vehicles and animals, CIFAR-10's two "superclasses", on both sides
# (2 + 3 each), as the CIFAR-100 split keeps every superclass on both sides. digits: 0-4 / 5-9.
CROSS_CLASS_SPLITS = {
    "cifar100": cifar100_cross_class_split(),
    "cifar10": ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9)),
    "digits": ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9)),
}
