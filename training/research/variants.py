"""The reproduce grid's variants (``dede reproduce --variant``): one clean encoder and the attacks on it (and, if
it says so, the detectors) trained differently, to test a diagnosis."""

from __future__ import annotations

from dataclasses import dataclass, replace

from training.research.grid import ATTACKS


@dataclass(frozen=True)
class Variant:
    """Extra ``key=value`` settings for the pre-training of one clean encoder, for the attacks on it and
    (``train_sets``) for every detector of its grid, the controls included. A variant's detector settings come after
    the command line's ``--stage-set train:...``: they are what the variant measures."""

    clean: str
    pretrain_sets: tuple[str, ...]
    attack_sets: tuple[str, ...]
    about: str  # one line for RESULTS.md
    attacks: tuple[str, ...] = ()  # the attacks it trains (empty: every attack on its clean encoder)
    retrain: bool = False  # the plain grid's recipe trained again (settings that only measure aside): its cells repeat
    train_sets: tuple[str, ...] = ()
    # a variant whose trained encoders and detectors this one copies, calibrating the detectors again with the score
    # that ``train_sets`` names (its only setting): nothing is trained
    rescores: str = ""

    def __post_init__(self) -> None:
        if self.rescores and [kv for kv in self.train_sets if not kv.startswith("score=")]:
            raise ValueError(f"a variant that rescores {self.rescores!r} sets the score only, not {self.train_sets}")

    @property
    def score(self) -> str | None:
        """The score its detectors are calibrated for, if it sets one."""
        return next((kv.split("=", 1)[1] for kv in reversed(self.train_sets) if kv.startswith("score=")), None)

    def trains(self, attack: str) -> bool:
        return ATTACKS[attack]["clean"] == self.clean and (not self.attacks or attack in self.attacks)


_ATTACK_NAMES = {"clip-backdoor": "CLIP Backdoor", "badclip": "BadCLIP"}
# the captions-classonly attacks fine-tuned longer: epochs -> the attacks trained that long
LONG_CLIP_ATTACKS = {8: ("clip-backdoor",), 12: ("clip-backdoor", "badclip"), 20: ("clip-backdoor",)}
VARIANTS = {f"slip{'' if w == 1 else w}": Variant(
    "clip", (f"ssl_weight={w}",), (f"ssl_weight={w}",),
    f"the mini-CLIP and its attacks trained with SLIP's image-only SimCLR term (weight {w}) next to the CLIP loss")
    for w in (1, 4)} | {"drupe16": Variant(
        "simclr", (), ("epochs=16", "asr_every=4"), "DRUPE trained for 16 epochs, twice the cpu preset's 8, its attack "
        "success measured every 4 (the SimCLR encoder pre-trained as in the plain grid)", ("drupe",)),
    "drupe8": Variant(
        "simclr", (), ("asr_every=4",), "DRUPE trained as in the plain grid (8 epochs, its attack success also "
        "measured after 4), on a SimCLR encoder pre-trained again as in the plain grid: the cpu preset's DRUPE on both "
        "out-of-distribution sets, GTSRB and Imagenette", ("drupe",), retrain=True),
    "badencoder": Variant(
        "simclr", (), (), "BadEncoder trained as in the plain grid (8 epochs), on a SimCLR encoder pre-trained again "
        "as in the plain grid, in a grid of its own: the BadEncoder rows on natural photos (Imagenette) as the "
        "out-of-distribution set, which the plain grid's GTSRB-only `ood` cells lack", ("badencoder",), retrain=True),
    "clip": Variant(
        "clip", (), (), "the mini-CLIP and both of its attacks trained as in the plain grid, in a grid of its own: the "
        "CLIP rows on both out-of-distribution sets, GTSRB and Imagenette (natural photos), against the same encoders",
        retrain=True),
    "captions": Variant(
        "clip", ("caption_attributes=true",), (), "the mini-CLIP pre-trained with half of its captions also describing "
        "the image (tone, colour of the centre and of the border: \"a photo of a dark red truck on blue.\"), and its "
        "attacks fine-tuning with such captions: does an embedding that keeps more of the image give DeDe a signal?"),
    "captions-classonly": Variant(
        "clip", ("caption_attributes=true",), ("poison_attributes=false",), "the `captions` mini-CLIP, attacked with "
        "poisoned pairs whose captions name the target class only (its clean pairs still describe their images): "
        "does the backdoored embedding keep the image's content because the poisoned captions described it?"),
    **{f"captions-classonly-long{'' if n == 8 else n}": Variant(
        "clip", ("caption_attributes=true",), ("poison_attributes=false", f"epochs={n}"), "the `captions-classonly` "
        f"{' and '.join(_ATTACK_NAMES[a] for a in attacks)} fine-tuned for {n} epochs, {n // 2} times the cpu preset's "
        "2: does a longer attack leave less of the image in the triggered embedding, and does DeDe then see it?",
        attacks) for n, attacks in LONG_CLIP_ATTACKS.items()}}
VARIANTS["captions-classonly-long12-dede3x"] = replace(  # the long12 encoders; detectors trained 270 epochs
    VARIANTS["captions-classonly-long12"], attacks=("clip-backdoor",), train_sets=("epochs=270",),
    about="the `captions-classonly-long12` CLIP Backdoor, its detector and control trained three times as long (270 "
    "epochs on Imagenette's 3,040 images instead of the Makefile's 90): is the best CLIP row's detector held back by "
    "its training length?")
# detectors trained on 6 random crops of each of Imagenette's 3,040 training images: 18,240 images for 15 epochs, the
# optimiser steps of the Makefile's 90 epochs on the whole images (the encoders are those of the variant it replaces)
CROPS6 = ("aux_crops=6", "epochs=15")
VARIANTS["captions-classonly-long12-crops6"] = replace(
    VARIANTS["captions-classonly-long12"], train_sets=CROPS6,
    about="the `captions-classonly-long12` CLIP Backdoor and BadCLIP, their detectors and control trained on 6 random "
    "crops of each of Imagenette's 3,040 training images (18,240 images, 15 epochs: the optimiser steps of the "
    "Makefile's 90 epochs on the whole images): are the CLIP rows held back by too few distinct auxiliary images?")
VARIANTS["captions-classonly-long12-crops12"] = replace(
    VARIANTS["captions-classonly-long12"], attacks=("clip-backdoor",), train_sets=("aux_crops=12", "epochs=15"),
    about="the `captions-classonly-long12` CLIP Backdoor, its detector and control trained on 12 random crops of each "
    "of Imagenette's 3,040 training images (36,480 images, 15 epochs: twice the steps of `-crops6`, each crop seen "
    "as often): do twice as many distinct auxiliary images help again?")
# the detectors of these variants scored with the content-adjusted score (``service.scores``: the paper score over the
# image's content to a power fitted on the auxiliary images), nothing retrained: ``<variant>-content``
CONTENT_SCORED = ("captions-classonly-long12", "captions-classonly-long12-crops6", "drupe8", "drupe16", "badencoder",
                  "clip")
for _name in CONTENT_SCORED:
    VARIANTS[f"{_name}-content"] = replace(
        VARIANTS[_name], train_sets=("score=content",), retrain=False, rescores=_name,
        about=f"the `{_name}` grid's detectors and controls, copied and calibrated again with the content-adjusted "
        "score (the paper score over the image's content to a power fitted on the auxiliary images): does a score "
        "that no longer ranks images by how much there is to draw see the backdoor better?")
# the detector's own seed: the detector and control of one attack of these variants trained again with other seeds
# (``<variant>-seed<k>``; seed 0 is the variant itself): variant -> (attack, seeds). The seed repeats of a variant
# that rescores another rescore that variant's seed repeats.
SEED_REPEATS = {"captions-classonly-long12": ("clip-backdoor", (1, 2)),
                "captions-classonly-long12-crops6": ("clip-backdoor", (1, 2, 3)), "drupe8": ("drupe", (1,)),
                "captions-classonly-long12-content": ("clip-backdoor", (1, 2)),
                "captions-classonly-long12-crops6-content": ("clip-backdoor", (1, 2, 3)),
                "drupe8-content": ("drupe", (1,))}
for _name, (_attack, _seeds) in SEED_REPEATS.items():
    _v = VARIANTS[_name]
    _crops = ", other crops" if any(t.startswith("aux_crops=") for t in _v.train_sets) else ""
    for _seed in _seeds:
        _how = (f"of the `{_v.rescores}-seed{_seed}` grid, scored as this variant scores" if _v.rescores else
                f"trained again with seed {_seed} (another initialisation, mask stream and held-out split{_crops})")
        VARIANTS[f"{_name}-seed{_seed}"] = replace(
            _v, attacks=(_attack,), retrain=False,
            train_sets=_v.train_sets if _v.rescores else (*_v.train_sets, f"seed={_seed}"),
            rescores=f"{_v.rescores}-seed{_seed}" if _v.rescores else "",
            about=f"the `{_name}` {_ATTACK_NAMES.get(_attack, _attack.upper())} detector and control {_how}: how far "
            "does the detector's own seed move the row?")


def seed_repeat(variant: str) -> tuple[str, int] | None:
    """(the variant repeated, the detector's seed) of a variant of ``SEED_REPEATS`` or of one of its repeats
    (``captions-classonly-long12-seed2``: (``captions-classonly-long12``, 2)); None for any other variant."""
    if variant in SEED_REPEATS:
        return variant, 0
    name, _, seed = variant.rpartition("-seed")
    return (name, int(seed)) if seed.isdigit() and name in SEED_REPEATS and int(seed) in SEED_REPEATS[name][1] \
        else None


VARIANTS["drupe8-crops6"] = replace(
    VARIANTS["drupe8"], train_sets=CROPS6,
    about="the `drupe8` DRUPE, its detector and control trained on 6 random crops of each of Imagenette's 3,040 "
    "training images (18,240 images, 15 epochs: the optimiser steps of the Makefile's 90 epochs on the whole images): "
    "does the cpu preset's DRUPE row reach the target with more distinct auxiliary images?")
