"""Tests of the ecc package."""
