"""Training with Lightning: ``ClassifierModule``, data modules and the ``train.py`` CLI.

This is the only package (with ``train.py``) that imports Lightning; ``import zoo`` never imports it.
"""
