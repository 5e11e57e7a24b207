"""Weights in and out of the zoo: ``python -m zoo.weights <command>``.

* ``export``: a training checkpoint (``train.py fit``) -> ``model.safetensors`` + ``config.json`` + README.md
  that ``timm.create_model('local-dir:<dir>', pretrained=True)`` loads (:mod:`zoo.weights.export`).

Importing this package imports neither Lightning nor the commands' modules.
"""
