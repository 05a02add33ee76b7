import numpy as np
import pytest

from leafgen.data.cache import cached_images
from leafgen.data.plant_pathology import read_folder


@pytest.fixture(scope="session")
def tiny_arrays(tiny_dataset, tmp_path_factory):
    """The tiny dataset's training images decoded at 32x48, and their labels."""
    folder = read_folder(tiny_dataset, check_images=False, progress=False)
    paths = [folder.path(i) for i in folder.image_ids]
    images = cached_images(paths, (32, 48), tmp_path_factory.mktemp("cache"), progress=False)
    return np.asarray(images), folder.labels
