"""Results to verdicts to pages: analysis, statistics, plots, HTML and text. Reads records only.
"""
