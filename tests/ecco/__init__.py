"""Tests of the ECCO-DNN package."""
