"""Regularizers that compose with any method: one file per family; base.py holds the protocol.

Selected as a list (``regularizer=[l2_pretrained,...]``); each YAML names its
class with ``_target_``, so adding one needs no edit here.
"""
