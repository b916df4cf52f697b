"""Adapter methods: one file per method (or tight family); base.py holds the protocols.

A method is selected by the ``_target_`` of its YAML in configs/method/, so
adding one needs no edit here.
"""
