"""`digits`: the offline default dataset, scikit-learn's 1,797 handwritten digits as a TFDS dataset.

The images are the real 8x8 digits of the UCI optdigits test set that scikit-learn ships (pixel
values 0-16, stored here as 0-255 grey PNGs), split once and for all with a fixed seed, stratified
by class: 1,437 training and 360 test images. Preparing it needs no network.
"""

from __future__ import annotations

from cnnbench.pipeline.tfenv import tfds

TEST_FRACTION, SPLIT_SEED = 0.2, 0


def builder_class():
    """The TFDS builder, defined on first use so that importing this module never imports TF."""
    if "cls" in _CACHE:
        return _CACHE["cls"]
    lib = tfds()

    class Digits(lib.core.GeneratorBasedBuilder):
        """scikit-learn's handwritten digits (UCI optdigits), 8x8 grey, 10 classes."""

        VERSION = lib.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "Stratified 80/20 train/test split with seed 0."}

        def _info(self):
            return self.dataset_info_from_configs(
                description=__doc__,
                features=lib.features.FeaturesDict({
                    "image": lib.features.Image(shape=(8, 8, 1)),
                    "label": lib.features.ClassLabel(names=[str(d) for d in range(10)]),
                }),
                supervised_keys=("image", "label"),
                homepage="https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
            )

        def _split_generators(self, dl_manager):
            import numpy as np
            from sklearn.datasets import load_digits
            from sklearn.model_selection import train_test_split

            data = load_digits()
            images = np.clip(data.images * 16, 0, 255).astype(np.uint8)[..., None]
            index = np.arange(len(images))
            train, test = train_test_split(index, test_size=TEST_FRACTION, random_state=SPLIT_SEED,
                                           stratify=data.target)
            return {"train": self._generate_examples(images, data.target, np.sort(train)),
                    "test": self._generate_examples(images, data.target, np.sort(test))}

        def _generate_examples(self, images, labels, index):
            for i in index:
                yield int(i), {"image": images[i], "label": int(labels[i])}

    _CACHE["cls"] = Digits
    return Digits


_CACHE: dict = {}
