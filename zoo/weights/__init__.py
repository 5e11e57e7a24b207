"""Weights in and out of the zoo: ``python -m zoo.weights <command>``.

* ``export``: a training checkpoint (``train.py fit``) -> ``model.safetensors`` + ``config.json`` + README.md
  that ``timm.create_model('local-dir:<dir>', pretrained=True)`` loads (:mod:`zoo.weights.export`).
* ``convert``: an official checkpoint of any family -> the same hub format, through the family's
  ``checkpoint_filter_fn``, verified by reloading (:mod:`zoo.weights.convert`).
* ``onnx``: ONNX export with ``torch.onnx.export(dynamo=True)``, checked with onnxruntime (:mod:`zoo.weights.onnx`).

Every weight file is read by :mod:`zoo.weights.safe_load` (safetensors, or ``torch.load(weights_only=True)`` with an
allow-list of harmless types; code-carrying pickles are refused, never run).

Importing this package imports neither Lightning nor the commands' modules.
"""
