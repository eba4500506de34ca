"""kpipe: does this kernel patch fix the slowdown, and what does it cost?"""

__version__ = "0.1.0"
