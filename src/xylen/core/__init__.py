"""The shared core: every xylen command calls into these modules."""
