"""What a run writes and reads back: results.json and its folder (the single source of truth).
"""
