"""Model families; importing this package registers every zoo model with timm."""
from .agent import *
from .biformer import *
from .factory import *
from .flowformer import *
from .inline import *
from .litv2 import *
from .maxvit import *
from .nat import *
from .nat_isotropic import *
from .ravlt import *
