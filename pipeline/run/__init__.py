"""Orders the stages for a set of candidates: prepare (fetch, patch, build), measure (interleaved repetitions,
retries), metadata.
"""
