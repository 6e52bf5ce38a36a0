"""Each family's tensor names in torchvision's and Keras's published files, beside the family
(timm's per-model filter functions): `vgg` (AlexNet "one weird trick" and VGG), `resnet`,
`googlenet`. Importing the package registers them all."""

# they register, in the order `weights download --list` and the errors name them
from cnnbench.transfer.naming import vgg, googlenet, resnet  # noqa: F401, I001
from cnnbench.transfer.naming.base import KERAS, TORCHVISION, Keras, Torchvision  # noqa: F401
