"""Whole evaluations built on a run: triage of a posted series, bisection.
"""
